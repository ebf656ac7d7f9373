//! Removes markup that could run script from user text (comments, direct messages), and
//! tells which text shows nothing once sanitised and which characters are invisible.
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

/// Whether sanitised HTML (the output of [`clean`]) shows nothing: once its tags are left
/// out, only whitespace (`&nbsp;` included) and invisible characters remain. `<b></b>`,
/// `<p> </p>` and `<a href="https://e.com"></a>` are blank.
pub fn is_blank(html: &str) -> bool {
    let mut quote = None;
    let mut in_tag = false;
    let mut text = String::new();
    for c in html.chars() {
        match (in_tag, quote, c) {
            (false, _, '<') => in_tag = true,
            (false, _, c) => text.push(c),
            (true, None, '>') => in_tag = false,
            (true, None, '"' | '\'') => quote = Some(c),
            (true, Some(q), c) if c == q => quote = None,
            (true, _, _) => {}
        }
    }
    text.replace("&nbsp;", " ")
        .chars()
        .all(|c| c.is_whitespace() || is_invisible(c))
}

/// Characters that show nothing or change how the text around them is shown: controls
/// (Unicode Cc), format characters (Cf: the bidi embeddings, overrides and isolates
/// U+202A–U+202E and U+2066–U+2069, the marks U+200E/U+200F, zero-width characters, the
/// byte-order mark, tags) and the line and paragraph separators U+2028/U+2029. In a file
/// name, `U+202E` makes `invoice\u{202E}fdp.exe` read as `invoiceexe.pdf`.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::{clean, is_blank, is_invisible};

    #[test]
    fn blank_once_sanitised() {
        for blank in [
            "<b></b>",
            "<p> </p>",
            "<br>",
            "<b>&nbsp;</b>",
            "<script>x</script>",
            "<a href=\"https://e.com/>x\"></a>",
            "\u{200B}<i>\u{202E}</i>",
        ] {
            assert!(is_blank(&clean(blank)), "{blank:?} -> {:?}", clean(blank));
        }
        for shown in [
            "<b>x</b>",
            "&lt;b&gt;",
            "a<br>",
            "<a href=\"https://e.com\">.</a>",
            "&amp;",
        ] {
            assert!(!is_blank(&clean(shown)), "{shown:?} -> {:?}", clean(shown));
        }
    }

    #[test]
    fn bidi_and_format_characters_are_invisible() {
        for c in [
            '\u{0}',
            '\u{7F}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{2028}',
            '\u{2029}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', ' ', '\u{E9}', '\u{5D0}', '\u{4E2D}', '-', '.'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }

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
