//! `cage keys init` and `cage keys issue NAME`: the cluster CA and the key pairs it signs,
//! under the site's `config/keys/`.

use super::exit;
use cage_runtime::config::Site;
use cage_runtime::keys::{self, Written};
use std::process::ExitCode;

/// What `cage keys` does.
#[derive(clap::Subcommand)]
pub enum KeysAction {
    /// Create the cluster CA (config/keys/ca.crt, ca.key) and the CLI's key pair (cli.crt,
    /// cli.key). Keep ca.key on one trusted host only.
    Init {
        /// Replace an existing CA (every key pair it signed stops working).
        #[arg(long)]
        force: bool,
    },
    /// Create the key pair of cage NAME (or of `cli`), signed by the cluster CA:
    /// config/keys/NAME.crt and NAME.key; copy both, with ca.crt, to the host running it.
    Issue {
        /// The cage (its certificate is for this name, which callers check).
        name: String,
        /// Also certify this DNS name or IP address (repeatable).
        #[arg(long = "also")]
        also: Vec<String>,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
}

pub fn keys(site: &Site, action: KeysAction) -> ExitCode {
    let dir = site.keys_dir();
    let made = match action {
        KeysAction::Init { force } => keys::init(&dir, force),
        KeysAction::Issue { name, also, force } => keys::issue(&dir, &name, &also, force),
    };
    match made {
        Ok(written) => {
            print(&written);
            ExitCode::SUCCESS
        }
        Err(e) => exit::fail(exit::OTHER, e),
    }
}

fn print(w: &Written) {
    for cert in &w.certs {
        println!("wrote {}", cert.display());
    }
    for key in &w.keys {
        println!("wrote {} (mode 0600)", key.display());
    }
    println!("valid until {}", w.valid_until);
}
