//! Where a connecting client's token is found, in the contract's order.

use serde_json::Value;

/// Finds the token in the first source present: `auth.token`, then `Authorization:
/// Bearer`, then the `token` query parameter.
pub fn find_token(auth: Option<&Value>, parts: &axum::http::request::Parts) -> Option<String> {
    if let Some(Value::String(t)) = auth.and_then(|a| a.get("token"))
        && !t.is_empty()
    {
        return Some(t.clone());
    }
    if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(value) = header.to_str()
    {
        let value = value.trim();
        if let Some((scheme, token)) = value.split_once(char::is_whitespace)
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(token.trim().to_owned());
        }
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}
