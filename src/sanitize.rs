//! Removes markup that could run script from user text (comments, direct messages).
//!
//! ammonia with an allow-list close to the Node backend's: a few formatting tags without
//! attributes, and `<a href>` with http(s) or mailto only. Elements that carry script or
//! style are removed with their content; other tags are dropped, their text kept.

use std::{collections::HashSet, sync::LazyLock};

static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut b = ammonia::Builder::empty();
    b.add_tags([
        "a",
        "b",
        "i",
        "em",
        "strong",
        "u",
        "s",
        "code",
        "pre",
        "br",
        "p",
        "ul",
        "ol",
        "li",
        "blockquote",
        "span",
    ])
    .add_tag_attributes("a", ["href"])
    .url_schemes(HashSet::from(["http", "https", "mailto"]))
    .link_rel(None)
    .clean_content_tags(HashSet::from([
        "script", "style", "iframe", "object", "embed", "applet", "template", "noscript",
        "textarea", "title", "xmp", "svg", "math",
    ]));
    b
});

/// `text` with every tag outside the allow-list removed.
pub fn clean(text: &str) -> String {
    CLEANER.clean(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn script_goes_formatting_stays() {
        assert_eq!(clean("<script>alert(1)</script>hello"), "hello");
        assert_eq!(
            clean("<b>bold</b> <img src=x onerror=alert(1)>"),
            "<b>bold</b> "
        );
        assert_eq!(clean(r#"<a href="javascript:alert(1)">x</a>"#), "<a>x</a>");
        assert_eq!(
            clean(r#"<a href="https://e.com">x</a>"#),
            r#"<a href="https://e.com">x</a>"#
        );
        assert_eq!(clean("plain text"), "plain text");
    }
}

/// Property tests: sanitising never panics and never lets a script element through.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn prop_no_script_survives(s in ".{0,200}", tag in "(?i)script|iframe|object|embed") {
            let out = super::clean(&format!("{s}<{tag}>alert(1)</{tag}>{s}"));
            let lower = out.to_ascii_lowercase();
            let needle = format!("<{}", tag.to_ascii_lowercase());
            let survived = lower.contains(&needle);
            prop_assert!(!survived);
        }
    }
}
