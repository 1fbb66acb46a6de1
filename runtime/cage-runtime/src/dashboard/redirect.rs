//! Where the dashboard sends a browser after an action: back to a page of this dashboard, never
//! to another site, and never with a value a `Location` header cannot carry.
//!
//! The `back` field of an action's form comes from the page, but the request is the client's:
//! anything can be in it. A browser reads `//evil`, `/\evil` and `https://evil` as other sites
//! (it treats `\` as `/` in web URLs), and a proxy that decodes once turns `/%2F…` or `/%5C…`
//! into those; a CR or LF would split the header.

/// A `back` value that no response may carry: refused before the action runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("back {0:?} holds a character a Location header cannot carry (control characters such as CR, LF or tab, spaces and non-ASCII are refused); nothing was done")]
pub struct Unsendable(pub String);

/// Where to go back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Back<'a> {
    /// This page of the dashboard (path and query, as the form gave it).
    Page(&'a str),
    /// The dashboard's page list: no `back` was given, or it was not a page of this dashboard.
    Default,
}

/// Where an action with form field `back` returns to, on a dashboard served under `base`
/// ("" or "/ui"); refused if `back` could not be sent in a header at all.
pub fn back_to<'a>(base: &str, back: Option<&'a str>) -> Result<Back<'a>, Unsendable> {
    let Some(back) = back.filter(|b| !b.is_empty()) else {
        return Ok(Back::Default);
    };
    // Visible ASCII only: what a header value may hold, and all a page's own path ever is
    // (paths and queries reach the form percent-encoded).
    if !back.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Unsendable(back.to_owned()));
    }
    Ok(if is_own_page(base, back) {
        Back::Page(back)
    } else {
        Back::Default
    })
}

/// Whether `back` is a path of this dashboard that every browser and proxy reads as one: it
/// starts with one `/` and then neither `/` nor `\`, also once percent-decoded, and lies
/// under `base`.
fn is_own_page(base: &str, back: &str) -> bool {
    let path = back.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let rooted_once =
        |p: &str| p.starts_with('/') && !matches!(p.as_bytes().get(1), Some(b'/' | b'\\'));
    rooted_once(path)
        && rooted_once(&decoded)
        && !path.contains('\\')
        && !decoded.contains('\\')
        && path.starts_with(&format!("{base}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pages_are_kept() {
        for (base, back) in [
            ("", "/"),
            ("", "/dead"),
            ("", "/queue/front/retry?min_age_secs=5&error=a%2Fb"),
            ("/ui", "/ui/"),
            ("/ui", "/ui/call/front/front-1a-2"),
            ("/ui", "/ui/queue/front/retry?error=x%20y#calls"),
        ] {
            assert_eq!(back_to(base, Some(back)), Ok(Back::Page(back)), "{back}");
        }
    }

    #[test]
    fn other_sites_and_strange_paths_go_to_the_page_list() {
        for back in [
            "/\\evil/",
            "//evil",
            "//evil.example/x",
            "https://evil",
            "http:/evil",
            "evil",
            "/%5Cevil",
            "/%5cevil",
            "/%2Fevil",
            "/%2f%2fevil",
            "/x\\..\\..\\evil",
            "/x/%5C",
            "javascript:alert(1)",
            "?notice=x",
        ] {
            assert_eq!(back_to("", Some(back)), Ok(Back::Default), "{back}");
        }
        // Not under the dashboard's prefix: the cage's API, not a page.
        assert_eq!(back_to("/ui", Some("/v1/jobs")), Ok(Back::Default));
        assert_eq!(back_to("/ui", Some("/uix/")), Ok(Back::Default));
        assert_eq!(back_to("/ui", None), Ok(Back::Default));
        assert_eq!(back_to("/ui", Some("")), Ok(Back::Default));
    }

    #[test]
    fn values_no_header_can_carry_are_refused() {
        for back in [
            "/ui/\r\nSet-Cookie: x=1",
            "/ui/\n",
            "/ui/\r",
            "/ui/\tx",
            "\t//evil",
            "/ui/ x",
            "/ui/\u{7f}",
            "/ui/\u{0}",
            "/ui/é",
            "/ui/\u{85}",
        ] {
            assert_eq!(
                back_to("/ui", Some(back)),
                Err(Unsendable(back.to_owned())),
                "{back:?}"
            );
        }
    }
}
