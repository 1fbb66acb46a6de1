//! What the dashboard does with the input of an action's form: its `back` field sends the
//! browser to a page of this dashboard only, and a value no header can carry is refused before
//! the action runs.

mod support;

use support::{free_port, module_so, Site};

/// A running cage `front` serving echo with its dashboard at `/ui`, three calls pending on it.
struct Dashboard {
    site: Site,
    base: String,
    token: String,
    csrf: String,
    calls: Vec<String>,
    _cage: support::RunningCage,
}

impl Dashboard {
    fn start() -> Self {
        let mut site = Site::new();
        let http = free_port();
        site.cage(
            "front",
            &["echo"],
            &format!("http_listen = \"127.0.0.1:{http}\"\n"),
        );
        site.install("echo", &module_so("echo", &[]));
        let cage = site.start("front");
        let calls = (0..3)
            .map(|i| site.enqueue("front", "echo.echo", &i.to_string(), &["--delay", "1h"]))
            .collect();
        let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token"))
            .unwrap()
            .trim()
            .to_owned();
        let base = format!("http://127.0.0.1:{http}/ui");
        let page = ureq::get(&format!("{base}/queue/front/retry"))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        Dashboard {
            site,
            base,
            token,
            csrf,
            calls,
            _cage: cage,
        }
    }

    /// Posts `action` on call `id` with form field `back`: status, and `Location` (or body).
    fn act(&self, action: &str, id: &str, back: &str) -> (u16, String) {
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let form = [
            ("csrf", self.csrf.as_str()),
            ("cage", "front"),
            ("id", id),
            ("action", action),
            ("back", back),
        ];
        match agent
            .post(&format!("{}/action", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_form(&form)
        {
            Ok(r) => (
                r.status(),
                r.header("location").unwrap_or_default().to_owned(),
            ),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("POST /action: {e}"),
        }
    }

    fn pending(&self) -> Vec<String> {
        self.site
            .listing("pending", Some("front"))
            .iter()
            .map(|v| v["record"]["call"]["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[test]
fn back_never_leads_to_another_site() {
    let d = Dashboard::start();
    let id = d.calls[0].as_str();
    // Each of these a browser (or a proxy decoding once) reads as another site.
    for back in [
        "/\\evil/",
        "//evil.example/",
        "https://evil.example/",
        "/%5Cevil",
        "/%2F%2Fevil",
        "evil.example",
        "/v1/jobs",
    ] {
        let (status, location) = d.act("retry-now", id, back);
        assert_eq!(status, 303, "{back}: {location}");
        assert!(
            location.starts_with("/ui/?notice=retry%2Dnow"),
            "{back} sends the browser to {location}"
        );
    }
    // A page of the dashboard is kept, with the outcome as its notice.
    let (status, location) = d.act("retry-now", id, "/ui/queue/front/retry?min_age_secs=1");
    assert_eq!(status, 303, "{location}");
    assert!(
        location.starts_with("/ui/queue/front/retry?min_age_secs=1&notice=retry%2Dnow"),
        "{location}"
    );
}

#[test]
fn a_back_no_header_can_carry_is_refused_before_the_action_runs() {
    let d = Dashboard::start();
    for (id, back) in [
        (&d.calls[0], "/ui/\r\nSet-Cookie: cage_dashboard=x"),
        (&d.calls[1], "/ui/\ttab"),
        (&d.calls[2], "/ui/caf\u{e9}"),
    ] {
        let (status, body) = d.act("cancel", id, back);
        assert_eq!(status, 400, "{back:?}: {body}");
        assert!(
            body.contains("back") && body.contains("nothing was done"),
            "{body}"
        );
    }
    let mut pending = d.pending();
    pending.sort();
    let mut calls = d.calls.clone();
    calls.sort();
    assert_eq!(pending, calls, "no refused cancel ran");

    // The same order with a sound back runs.
    let (status, location) = d.act("cancel", &d.calls[0], "/ui/dead");
    assert_eq!(status, 303, "{location}");
    assert!(location.starts_with("/ui/dead?notice=cancel"), "{location}");
    assert!(!d.pending().contains(&d.calls[0]), "the call was cancelled");
}
