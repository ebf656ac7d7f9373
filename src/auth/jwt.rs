//! JWT verification with the pinned algorithms and the configured keys.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::{AuthError, User};
use crate::config::Config;

/// Longest token accepted, in bytes; longer ones are `Authentication failed` unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A configuration that cannot verify tokens.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthConfigError(String);

/// Verifies tokens with the pinned algorithms and the configured keys.
pub struct Verifier {
    algorithms: Vec<Algorithm>,
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Verifier {
    /// The accepted algorithms, as `JWT_ALGORITHMS` names them (`HS256,RS256`).
    pub fn algorithm_names(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier, refusing a configuration where a pinned algorithm has no key.
    pub fn from_config(cfg: &Config) -> Result<Verifier, AuthConfigError> {
        let public_key = match (&cfg.jwt_public_key, &cfg.jwt_public_key_file) {
            (Some(k), _) if !k.trim().is_empty() => Some(k.clone()),
            (_, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                AuthConfigError(format!(
                    "cannot read JWT_PUBLIC_KEY_FILE {}: {e}",
                    path.display()
                ))
            })?),
            _ => None,
        };
        let names: Vec<String> = if cfg.jwt_algorithms.iter().any(|a| !a.trim().is_empty()) {
            cfg.jwt_algorithms
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect()
        } else if public_key.is_some() {
            vec!["RS256".into(), "ES256".into()]
        } else {
            vec!["HS256".into()]
        };
        let mut algorithms = Vec::new();
        for name in &names {
            let alg = match name.as_str() {
                "HS256" => Algorithm::HS256,
                "HS384" => Algorithm::HS384,
                "HS512" => Algorithm::HS512,
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                "ES256" => Algorithm::ES256,
                "ES384" => Algorithm::ES384,
                other => {
                    return Err(AuthConfigError(format!(
                        "JWT_ALGORITHMS: unsupported algorithm {other:?}"
                    )));
                }
            };
            algorithms.push(alg);
        }
        let secret = cfg.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let hmac = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        let (rsa, ec) = match &public_key {
            Some(pem) => (
                DecodingKey::from_rsa_pem(pem.as_bytes()).ok(),
                DecodingKey::from_ec_pem(pem.as_bytes()).ok(),
            ),
            None => (None, None),
        };
        if public_key.is_some() && rsa.is_none() && ec.is_none() {
            return Err(AuthConfigError(
                "JWT_PUBLIC_KEY is not an RSA or EC public key in PEM".into(),
            ));
        }
        let verifier = Verifier {
            algorithms,
            hmac,
            rsa,
            ec,
            issuer: cfg.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: cfg.jwt_audience.clone().filter(|s| !s.is_empty()),
        };
        // One public key serves one family (RSA or EC), so a pinned algorithm may lack a
        // key: its tokens are refused. At least one pinned algorithm must be usable.
        let usable: Vec<Algorithm> = verifier
            .algorithms
            .iter()
            .copied()
            .filter(|a| verifier.key_for(*a).is_some())
            .collect();
        if cfg.auth_required && usable.is_empty() {
            let need = if verifier.algorithms.iter().any(|a| is_hmac(*a)) {
                "JWT_SECRET"
            } else {
                "JWT_PUBLIC_KEY"
            };
            return Err(AuthConfigError(format!(
                "{need} is required: AUTH_REQUIRED is true and no key matches JWT_ALGORITHMS {:?}",
                verifier.algorithms
            )));
        }
        let unusable: Vec<Algorithm> = verifier
            .algorithms
            .iter()
            .copied()
            .filter(|a| !usable.contains(a))
            .collect();
        if !unusable.is_empty() && !usable.is_empty() {
            tracing::info!(
                ?usable,
                ?unusable,
                "pinned algorithms without a key refuse their tokens"
            );
        }
        Ok(verifier)
    }

    fn key_for(&self, alg: Algorithm) -> Option<&DecodingKey> {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => self.rsa.as_ref(),
            Algorithm::ES256 | Algorithm::ES384 => self.ec.as_ref(),
            _ => None,
        }
    }

    /// Verifies a token and reads its user.
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        // Real tokens are a few hundred bytes; a huge one is refused before any decoding
        // or signature work is spent on it.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Failed);
        }
        let header = decode_header(token).map_err(|_| AuthError::Failed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Failed);
        }
        // The key is chosen by the algorithm family, so an HS token can never be checked
        // against the public key (the HS/RS confusion attack).
        let key = self.key_for(header.alg).ok_or(AuthError::Failed)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not only right when present.
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<Value>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Failed,
        })?;
        User::from_claims(&data.claims).ok_or(AuthError::Failed)
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::Id;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn verifier() -> Verifier {
        Verifier::from_config(&Config::for_tests("secret")).unwrap()
    }

    fn token(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn exp_in(secs: i64) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp() + secs
    }

    #[test]
    fn a_good_token_gives_its_user() {
        let t = token(
            json!({"userId": 7, "name": "Ann", "permissions": ["admin"], "projects": [1, "b", "bad id"], "exp": exp_in(60)}),
            "secret",
        );
        let user = verifier().verify(&t).unwrap();
        assert_eq!(user.id.as_str(), "7");
        assert_eq!(&*user.name, "Ann");
        assert!(user.admin && user.can("room_broadcast"));
        assert!(user.projects.contains(&Id::parse("1").unwrap()));
        assert!(user.projects.contains(&Id::parse("b").unwrap()));
        assert_eq!(user.projects.iter().count(), 2);
    }

    #[test]
    fn a_huge_token_is_refused_even_with_a_good_signature() {
        let padding = "x".repeat(MAX_TOKEN_BYTES);
        let t = token(
            json!({"userId": "u", "pad": padding, "exp": exp_in(60)}),
            "secret",
        );
        assert_eq!(verifier().verify(&t).unwrap_err(), AuthError::Failed);
        let small = token(json!({"userId": "u", "exp": exp_in(60)}), "secret");
        assert!(verifier().verify(&small).is_ok());
    }

    #[test]
    fn failures_map_to_the_contract_messages() {
        let v = verifier();
        assert_eq!(
            v.verify(&token(json!({"sub": "u", "exp": exp_in(-10)}), "secret"))
                .unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            v.verify(&token(json!({"sub": "u", "exp": exp_in(60)}), "other"))
                .unwrap_err(),
            AuthError::Failed
        );
        assert_eq!(
            v.verify(&token(json!({"sub": "u"}), "secret")).unwrap_err(),
            AuthError::Failed
        );
        assert_eq!(
            v.verify(&token(json!({"exp": exp_in(60)}), "secret"))
                .unwrap_err(),
            AuthError::Failed
        );
        assert_eq!(
            v.verify(&token(json!({"sub": "a b", "exp": exp_in(60)}), "secret"))
                .unwrap_err(),
            AuthError::Failed
        );
        assert_eq!(
            v.verify(&token(
                json!({"sub": "u", "exp": exp_in(60), "nbf": exp_in(30)}),
                "secret"
            ))
            .unwrap_err(),
            AuthError::Failed
        );
        assert_eq!(v.verify("not.a.token").unwrap_err(), AuthError::Failed);
        // alg none: header {"alg":"none"}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none).unwrap_err(), AuthError::Failed);
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"sub": "u", "exp": exp_in(60)}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384).unwrap_err(), AuthError::Failed);
    }

    #[test]
    fn a_missing_secret_is_a_startup_error() {
        let mut cfg = Config::for_tests("x");
        cfg.jwt_secret = None;
        let err = Verifier::from_config(&cfg).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET is required"), "{err}");
        cfg.jwt_algorithms = vec!["RS256".into()];
        assert!(
            Verifier::from_config(&cfg)
                .unwrap_err()
                .to_string()
                .contains("JWT_PUBLIC_KEY is required")
        );
        cfg.auth_required = false;
        assert!(Verifier::from_config(&cfg).is_ok());
    }
}

/// Property tests: token verification never panics, whatever the token or its claims.
#[cfg(test)]
mod props {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use proptest::prelude::*;

    use super::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{1,8}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn prop_arbitrary_strings_are_refused(token in ".{0,400}") {
            let v = Verifier::from_config(&Config::for_tests("secret")).unwrap();
            prop_assert!(v.verify(&token).is_err());
        }

        #[test]
        fn prop_signed_arbitrary_claims_never_panic(
            user in json(), projects in json(), perms in json(), name in json(), extra in json()
        ) {
            let v = Verifier::from_config(&Config::for_tests("secret")).unwrap();
            let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 60;
            let claims = serde_json::json!({
                "userId": user, "projects": projects, "permissions": perms, "name": name,
                "teams": extra, "exp": exp,
            });
            let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"secret")).unwrap();
            if let Ok(u) = v.verify(&token) {
                // A user that gets through has an id of the id alphabet.
                prop_assert!(crate::rooms::Id::parse(u.id.as_str()).is_some());
            }
        }
    }
}
