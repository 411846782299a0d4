//! URLs as they may be shown or written: without `user:password@` and without the query or
//! fragment (where API keys travel). Serve's remote tiers and bench's remote engines print and
//! record the URLs users give them; whatever credentials those carry stay out of messages,
//! headers, logs and results files.

/// `scheme://user:pw@host:port/path?key=…#frag` → `scheme://host:port/path`. A string with no
/// `scheme://` is cut at its first `@`, `?` or `#`, marked with `…` when something was cut.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return cut_at_secret(url);
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (kept, _) = rest.split_at(end);
    let auth_end = kept.find('/').unwrap_or(kept.len());
    let (authority, path) = kept.split_at(auth_end);
    // The last `@` of the authority ends the user info: a password may itself hold `@`.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

fn cut_at_secret(s: &str) -> String {
    match s.find(['@', '?', '#']) {
        Some(cut) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_query_and_fragment_are_removed() {
        assert_eq!(
            redact_url("http://user:p%40ss@127.0.0.1:9/v1?key=secret#m"),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(redact_url("https://u:a@b@host/v1"), "https://host/v1");
        assert_eq!(redact_url("http://[::1]:8080/v1/"), "http://[::1]:8080/v1/");
        assert_eq!(redact_url("http://host?k=1"), "http://host");
        assert_eq!(redact_url("http://host/p/@x"), "http://host/p/@x");
        assert_eq!(redact_url("not a url user:pw@x?k=1"), "not a url user:pw…");
        assert_eq!(redact_url("plain"), "plain");
    }
}
