//! Checking a module's descriptor once its fields are read out of the library: ABI version,
//! size, name, version and method names. Pure, so it can be tested (and fuzzed) without a
//! library; the unsafe reads stay in [`super::library`].

use super::LoadError;
use cage_sdk::abi;

/// Longest name, version or method name a descriptor may carry, in bytes.
pub const TEXT_MAX: usize = 4096;
/// Most methods a descriptor may list.
pub const METHODS_MAX: usize = 10_000;

/// A descriptor's fields as read from the library.
#[derive(Debug, Clone, Default)]
pub struct DescriptorFields {
    /// `abi_version`.
    pub abi_version: u32,
    /// `descriptor_size`.
    pub descriptor_size: u32,
    /// The module name's bytes.
    pub name: Vec<u8>,
    /// The version's bytes.
    pub version: Vec<u8>,
    /// Each method name's bytes.
    pub methods: Vec<Vec<u8>>,
}

/// What a valid descriptor says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Described {
    /// Module name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Method names.
    pub methods: Vec<String>,
}

/// Refuses a text field longer than [`TEXT_MAX`] before it is read.
pub fn check_len(len: usize, what: &str) -> Result<(), LoadError> {
    if len > TEXT_MAX {
        return Err(LoadError::BadDescriptor(format!(
            "{what} is {len} bytes long"
        )));
    }
    Ok(())
}

/// Refuses a method table that is absurdly long or missing before it is read.
pub fn check_table(count: usize, null: bool) -> Result<(), LoadError> {
    if count > METHODS_MAX || (count > 0 && null) {
        return Err(LoadError::BadDescriptor(format!(
            "method table of {count} entries"
        )));
    }
    Ok(())
}

fn text(bytes: &[u8], what: &str) -> Result<String, LoadError> {
    check_len(bytes.len(), what)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| LoadError::BadDescriptor(format!("{what} is not UTF-8")))
}

/// Checks the fields of module `expected`'s descriptor.
pub fn check(expected: &str, f: &DescriptorFields) -> Result<Described, LoadError> {
    if f.abi_version != abi::ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            found: format!("a descriptor of ABI {}", f.abi_version),
            expected: abi::ABI_VERSION,
            symbol: abi::ENTRY_SYMBOL,
        });
    }
    let size = std::mem::size_of::<abi::ModuleDescriptor>();
    if (f.descriptor_size as usize) < size {
        return Err(LoadError::BadDescriptor(format!(
            "descriptor is {} bytes, expected {size}",
            f.descriptor_size
        )));
    }
    let name = text(&f.name, "module name")?;
    if name != expected {
        return Err(LoadError::NameMismatch {
            expected: expected.to_owned(),
            found: name,
        });
    }
    check_table(f.methods.len(), false)?;
    Ok(Described {
        name,
        version: text(&f.version, "module version")?,
        methods: f
            .methods
            .iter()
            .map(|m| text(m, "method name"))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DescriptorFields {
        DescriptorFields {
            abi_version: abi::ABI_VERSION,
            descriptor_size: std::mem::size_of::<abi::ModuleDescriptor>() as u32,
            name: b"echo".to_vec(),
            version: b"1.0".to_vec(),
            methods: vec![b"shout".to_vec()],
        }
    }

    #[test]
    fn each_field_is_checked() {
        assert_eq!(check("echo", &good()).unwrap().methods, vec!["shout"]);
        let bad = |f: fn(&mut DescriptorFields)| {
            let mut d = good();
            f(&mut d);
            check("echo", &d).unwrap_err()
        };
        assert!(matches!(
            bad(|d| d.abi_version = 9),
            LoadError::AbiMismatch { .. }
        ));
        assert!(matches!(
            bad(|d| d.descriptor_size = 3),
            LoadError::BadDescriptor(_)
        ));
        assert!(matches!(
            bad(|d| d.name = b"other".to_vec()),
            LoadError::NameMismatch { .. }
        ));
        assert!(matches!(
            bad(|d| d.version = vec![0xff]),
            LoadError::BadDescriptor(_)
        ));
        assert!(matches!(
            bad(|d| d.methods = vec![vec![b'a'; 5000]]),
            LoadError::BadDescriptor(_)
        ));
    }
}
