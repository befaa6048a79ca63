//! JWT as the password: the CONNECT's Password is a JSON Web Token (RFC 7519), signed
//! with HS256, RS256 or ES256 by whoever issues the fleet's tokens; the broker checks
//! the signature with a key from a file (a shared secret, a public key in PEM, or a
//! JSON Web Key Set), then `exp`, `nbf`, and `iss` and `aud` if configured, and makes one
//! claim (`sub` by default) the client's user name, which ACLs see as `%u`.
//!
//! Only the one configured algorithm is accepted; a header saying `none`, or any other
//! algorithm, is refused before any key is tried. The time claims are checked here
//! rather than by `jsonwebtoken`, strictly: `exp` and `nbf` must be numbers (a string
//! there is a refusal, not an absent claim), with [`JwtConfig::leeway`] seconds of
//! clock difference allowed either way.
//!
//! Verification is a few microseconds (HS256) to tens of microseconds (RS256, ES256) of
//! CPU, done inline in the connection's task; keys are parsed when the file is read, at
//! start and at each reload, and sit behind an `ArcSwap` like the password file's users.

use std::{
    fmt,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Map, Value};

use super::AuthFileError;
use crate::config::{JwtAlgorithm, JwtConfig};

/// The longest user name MQTT can carry.
const MAX_USERNAME: usize = 65_535;

/// The keys read from the key file: each with the `kid` it was given, if any.
struct Keys {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(kid, _)| kid))
            .finish()
    }
}

/// Verifies JWTs given as passwords, by a [`JwtConfig`].
#[derive(Debug)]
pub struct Jwt {
    config: JwtConfig,
    algorithm: Algorithm,
    keys: ArcSwap<Keys>,
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The value of the configured claim: the client's user name.
    pub username: String,
    /// What the token allows (`acl_claim`), if it says.
    pub grants: Option<TokenGrants>,
    /// When the token runs out, in seconds since the Unix epoch: its `exp` plus the
    /// configured leeway, as verification counts it; `None` if it has no `exp`, or if
    /// `disconnect_after_expire` is off (a connection then outlives its token).
    pub valid_until: Option<u64>,
}

/// The most topic filters a token's permissions may list.
pub const MAX_GRANTS: usize = 256;

/// What a token allows (`JwtConfig::acl_claim`): the topic filters a client may
/// publish to and subscribe within.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenGrants {
    publish: Vec<Box<str>>,
    subscribe: Vec<Box<str>>,
}

impl TokenGrants {
    /// Reads the claim's value: an object with `pub`, `sub` and `all` arrays of valid
    /// topic filters, nothing else.
    ///
    /// # Errors
    /// What is wrong with it, for the refusal's log line.
    pub fn from_claim(claim: &str, value: &Value) -> Result<Self, TokenError> {
        let Value::Object(map) = value else {
            return refuse(format!("the token's {claim} is not an object"));
        };
        let mut grants = Self::default();
        let mut count = 0usize;
        for (key, filters) in map {
            let (publish, subscribe) = match key.as_str() {
                "pub" => (true, false),
                "sub" => (false, true),
                "all" => (true, true),
                other => {
                    return refuse(format!(
                        "the token's {claim} has {other:?}: only pub, sub and all"
                    ));
                }
            };
            let Value::Array(filters) = filters else {
                return refuse(format!("the token's {claim}.{key} is not an array"));
            };
            for filter in filters {
                count += 1;
                if count > MAX_GRANTS {
                    return refuse(format!(
                        "the token's {claim} lists more than {MAX_GRANTS} filters"
                    ));
                }
                let Some(filter) = filter.as_str() else {
                    return refuse(format!("the token's {claim}.{key} holds a non-string"));
                };
                if mqtt_topics::TopicFilter::new(filter).is_err() {
                    return refuse(format!(
                        "the token's {claim}.{key} holds {filter:?}, not a topic filter"
                    ));
                }
                if publish {
                    grants.publish.push(filter.into());
                }
                if subscribe {
                    grants.subscribe.push(filter.into());
                }
            }
        }
        Ok(grants)
    }

    /// Whether the token lets its client publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| super::acl::matches(f, topic))
    }

    /// Whether a message on `topic` may reach the token's client: a `sub` or `all`
    /// filter matches it. Checked at each delivery, so that subscriptions a session kept
    /// from an earlier connection (with another token) carry only what this one allows.
    pub fn may_receive(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|f| super::acl::matches(f, topic))
    }

    /// Whether the token lets its client subscribe to `filter` (a `$share/` one by the
    /// filter after its group): every topic it matches must be matched by a granted one.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = super::acl::topic_filter(filter);
        self.subscribe.iter().any(|f| super::acl::covers(f, filter))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError(String);

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenError {}

fn refuse<T>(why: impl Into<String>) -> Result<T, TokenError> {
    Err(TokenError(why.into()))
}

impl Jwt {
    /// Reads the key file `config` names (blocking: at start-up or on a blocking
    /// thread).
    ///
    /// # Errors
    /// If the file cannot be read or holds no usable key: the error names the file
    /// (and the line, for a JWKS file that is not JSON) and the reason.
    pub fn load(config: &JwtConfig) -> Result<Self, AuthFileError> {
        let algorithm = match config.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let keys = read_keys(config, algorithm)?;
        Ok(Self {
            config: config.clone(),
            algorithm,
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// Reads the key file again and puts its keys in force for the next CONNECT; on an
    /// error the keys in force stay.
    ///
    /// # Errors
    /// As [`Jwt::load`].
    pub fn reload(&self) -> Result<(), AuthFileError> {
        self.keys
            .store(Arc::new(read_keys(&self.config, self.algorithm)?));
        Ok(())
    }

    /// The key file (`key_file` or `jwks_file`).
    pub fn path(&self) -> &Path {
        self.config
            .key_file
            .as_deref()
            .or(self.config.jwks_file.as_deref())
            .unwrap_or(Path::new(""))
    }

    /// Whether its tokens may carry their client's permissions (`acl_claim`), which
    /// then apply to every delivery too.
    pub fn carries_permissions(&self) -> bool {
        self.config.acl_claim.is_some()
    }

    /// Verifies `token` (a CONNECT's Password) now.
    ///
    /// # Errors
    /// Why it is refused: not a JWT, another algorithm, a bad signature, expired, not
    /// yet valid, another issuer or audience, no user name claim.
    pub fn verify(&self, token: &[u8]) -> Result<Identity, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    /// [`Jwt::verify`] at `now`, in seconds since the Unix epoch.
    ///
    /// # Errors
    /// As [`Jwt::verify`].
    pub fn verify_at(&self, token: &[u8], now: u64) -> Result<Identity, TokenError> {
        let Ok(token) = std::str::from_utf8(token) else {
            return refuse("the password is not a JWT (not UTF-8)");
        };
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(e) => return refuse(format!("the password is not a JWT: {e}")),
        };
        if header.alg != self.algorithm {
            return refuse(format!(
                "the token is signed with {:?}, and only {:?} is accepted",
                header.alg, self.algorithm
            ));
        }
        let mut validation = Validation::new(self.algorithm);
        // Checked below, strictly typed.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let keys = self.keys.load();
        // The key the token names, else keys without a name (a single key file has
        // none), else the set's only key: never every key of a set, which would let
        // one garbage token cost as many signature checks as the set has keys.
        let named = |kid: &Option<String>| match (&header.kid, kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            _ => false,
        };
        let choose: &dyn Fn(&Option<String>) -> bool = if keys.keys.iter().any(|(k, _)| named(k)) {
            &named
        } else if keys.keys.iter().any(|(k, _)| k.is_none()) {
            &|k: &Option<String>| k.is_none()
        } else if keys.keys.len() == 1 {
            &|_: &Option<String>| true
        } else {
            &|_: &Option<String>| false
        };
        let mut candidates = keys.keys.iter().filter(|(kid, _)| choose(kid)).peekable();
        if candidates.peek().is_none() {
            return refuse(format!(
                "no key with kid {:?} in {}",
                header.kid.as_deref().unwrap_or_default(),
                self.path().display()
            ));
        }
        let mut last = None;
        let claims = candidates.find_map(|(_, key)| {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => Some(data.claims),
                Err(e) => {
                    last = Some(e);
                    None
                }
            }
        });
        let Some(claims) = claims else {
            return refuse(match last {
                Some(e) => format!("the token does not verify: {e}"),
                None => "the token does not verify".to_owned(),
            });
        };
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Identity, TokenError> {
        let leeway = self.config.leeway;
        let valid_until = match claims.get("exp") {
            None if self.config.require_exp => return refuse("the token has no exp"),
            None => None,
            Some(exp) => {
                let Some(exp) = exp.as_f64() else {
                    return refuse("the token's exp is not a number");
                };
                if exp + (leeway as f64) <= now as f64 {
                    return refuse(format!("the token expired at {exp} (now {now})"));
                }
                // Saturating: an exp beyond u64 seconds is as good as never.
                let until = (exp + leeway as f64).floor() as u64;
                self.config.disconnect_after_expire.then_some(until)
            }
        };
        if let Some(nbf) = claims.get("nbf") {
            let Some(nbf) = nbf.as_f64() else {
                return refuse("the token's nbf is not a number");
            };
            if nbf > now.saturating_add(leeway) as f64 {
                return refuse(format!("the token is not valid before {nbf} (now {now})"));
            }
        }
        if let Some(issuer) = &self.config.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
                return refuse(format!("the token's iss is not {issuer:?}"));
            }
        }
        if let Some(audience) = &self.config.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return refuse(format!("the token's aud does not include {audience:?}"));
            }
        }
        let claim = &self.config.username_claim;
        let username = match claims.get(claim) {
            Some(Value::String(name)) if !name.is_empty() && name.len() <= MAX_USERNAME => name,
            Some(Value::String(_)) => {
                return refuse(format!("the token's {claim} is empty or too long"));
            }
            Some(_) => return refuse(format!("the token's {claim} is not a string")),
            None => return refuse(format!("the token has no {claim} to name the user")),
        };
        let grants = match &self.config.acl_claim {
            Some(name) => match claims.get(name) {
                Some(value) => Some(TokenGrants::from_claim(name, value)?),
                None => None,
            },
            None => None,
        };
        Ok(Identity {
            username: username.clone(),
            grants,
            valid_until,
        })
    }
}

/// Reads the keys of `config`'s key file for `algorithm`.
fn read_keys(config: &JwtConfig, algorithm: Algorithm) -> Result<Keys, AuthFileError> {
    if let Some(path) = &config.key_file {
        let bytes = std::fs::read(path).map_err(|e| AuthFileError::io(path, &e))?;
        let bad = |reason: String| AuthFileError::new(path, reason);
        let key = match algorithm {
            Algorithm::HS256 => {
                let secret = bytes
                    .strip_suffix(b"\r\n")
                    .or_else(|| bytes.strip_suffix(b"\n"))
                    .unwrap_or(&bytes);
                if secret.is_empty() {
                    return Err(bad("the HS256 secret is empty".to_owned()));
                }
                if secret.starts_with(b"-----BEGIN") {
                    // A public key as a shared secret would let anyone who has the
                    // public key sign tokens: surely meant for RS256 or ES256.
                    return Err(bad(
                        "the HS256 secret is a PEM file (a public key?): HS256 needs a \
                         shared secret; for a public key set algorithm = \"RS256\" or \"ES256\""
                            .to_owned(),
                    ));
                }
                DecodingKey::from_secret(secret)
            }
            Algorithm::ES256 => DecodingKey::from_ec_pem(&bytes)
                .map_err(|e| bad(format!("not an EC public key in PEM: {e}")))?,
            _ => DecodingKey::from_rsa_pem(&bytes)
                .map_err(|e| bad(format!("not an RSA public key in PEM: {e}")))?,
        };
        return Ok(Keys {
            keys: vec![(None, key)],
        });
    }
    let path = config.jwks_file.as_deref().unwrap_or(Path::new(""));
    let text = std::fs::read(path).map_err(|e| AuthFileError::io(path, &e))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| AuthFileError::at(path, e.line(), format!("not a JSON Web Key Set: {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthFileError::new(path, format!("keys[{i}]: not a usable key: {e}")))?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    if keys.is_empty() {
        return Err(AuthFileError::new(path, "no key in the set".to_owned()));
    }
    Ok(Keys { keys })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::path::PathBuf;

    fn hs256(dir: &Path) -> (Jwt, EncodingKey) {
        let path = dir.join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let jwt = Jwt::load(&JwtConfig::new(JwtAlgorithm::HS256, &path)).unwrap();
        (jwt, EncodingKey::from_secret(b"s3cret"))
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mqtt-jwt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn claims_are_checked_strictly() {
        let (jwt, key) = hs256(&dir("claims"));
        let now = 1_700_000_000u64;
        let token = |claims: Value| {
            encode(&Header::new(Algorithm::HS256), &claims, &key)
                .unwrap()
                .into_bytes()
        };
        let ok = jwt.verify_at(&token(json!({"sub": "dev1", "exp": now + 60})), now);
        assert_eq!(ok.unwrap().username, "dev1");
        // Within the leeway, and past it.
        assert!(
            jwt.verify_at(&token(json!({"sub": "a", "exp": now - 10})), now)
                .is_ok()
        );
        let e = jwt.verify_at(&token(json!({"sub": "a", "exp": now - 31})), now);
        assert!(e.unwrap_err().0.contains("expired"));
        let e = jwt.verify_at(
            &token(json!({"sub": "a", "exp": now + 60, "nbf": now + 100})),
            now,
        );
        assert!(e.unwrap_err().0.contains("not valid before"));
        // A string where a number belongs is a refusal, not a missing claim.
        let e = jwt.verify_at(&token(json!({"sub": "a", "exp": "never"})), now);
        assert!(e.unwrap_err().0.contains("not a number"));
        let e = jwt.verify_at(
            &token(json!({"sub": "a", "exp": now + 60, "nbf": "x"})),
            now,
        );
        assert!(e.unwrap_err().0.contains("not a number"));
        assert!(jwt.verify_at(&token(json!({"sub": "a"})), now).is_err());
        let e = jwt.verify_at(&token(json!({"sub": 7, "exp": now + 60})), now);
        assert!(e.unwrap_err().0.contains("not a string"));
        assert!(jwt.verify_at(b"not.a.token", now).is_err());
        assert!(jwt.verify_at(&[0xff, 0xfe], now).is_err());
    }

    #[test]
    fn issuer_audience_and_another_claim() {
        let d = dir("iss");
        let path = d.join("secret");
        std::fs::write(&path, "k").unwrap();
        let mut config = JwtConfig::new(JwtAlgorithm::HS256, &path);
        config.issuer = Some("fleet".into());
        config.audience = Some("mqtt".into());
        config.username_claim = "device".into();
        config.require_exp = false;
        let jwt = Jwt::load(&config).unwrap();
        let key = EncodingKey::from_secret(b"k");
        let token = |claims: Value| {
            encode(&Header::new(Algorithm::HS256), &claims, &key)
                .unwrap()
                .into_bytes()
        };
        let ok = jwt.verify_at(
            &token(json!({"device": "d9", "iss": "fleet", "aud": ["x", "mqtt"]})),
            0,
        );
        assert_eq!(ok.unwrap().username, "d9");
        assert!(
            jwt.verify_at(
                &token(json!({"device": "d9", "iss": "other", "aud": "mqtt"})),
                0
            )
            .is_err()
        );
        assert!(
            jwt.verify_at(
                &token(json!({"device": "d9", "iss": "fleet", "aud": "web"})),
                0
            )
            .is_err()
        );
        assert!(
            jwt.verify_at(&token(json!({"device": "d9", "iss": "fleet"})), 0)
                .is_err()
        );
        assert!(
            jwt.verify_at(
                &token(json!({"sub": "d9", "iss": "fleet", "aud": "mqtt"})),
                0
            )
            .is_err()
        );
    }

    #[test]
    fn bad_key_files_name_the_file() {
        let d = dir("bad");
        let path = d.join("key.pem");
        std::fs::write(&path, "nonsense").unwrap();
        let e = Jwt::load(&JwtConfig::new(JwtAlgorithm::ES256, &path)).unwrap_err();
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
        let jwks = d.join("jwks.json");
        std::fs::write(&jwks, "{\n  \"keys\": [\n  oops").unwrap();
        let mut config = JwtConfig::new(JwtAlgorithm::RS256, &jwks);
        config.key_file = None;
        config.jwks_file = Some(jwks.clone());
        let e = Jwt::load(&config).unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        // A public key given as an HS256 secret would let anyone holding it sign.
        let pem = d.join("public.pem");
        std::fs::write(
            &pem,
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let e = Jwt::load(&JwtConfig::new(JwtAlgorithm::HS256, &pem)).unwrap_err();
        assert!(e.to_string().contains("PEM"), "{e}");
    }

    // A token that names no key is checked against the set's only key, or keys without
    // a name, never against every key of a set.
    #[test]
    fn a_token_without_kid_is_not_tried_against_every_key() {
        let d = dir("kid");
        let jwks = d.join("jwks.json");
        let set = |keys: &[(&str, &str)]| {
            let keys: Vec<_> = keys
                .iter()
                .map(|(kid, k)| {
                    use base64::Engine;
                    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k);
                    json!({"kty": "oct", "kid": kid, "k": k, "alg": "HS256"})
                })
                .collect();
            json!({ "keys": keys }).to_string()
        };
        let mut config = JwtConfig::new(JwtAlgorithm::HS256, &jwks);
        config.key_file = None;
        config.jwks_file = Some(jwks.clone());
        let claims = json!({"sub": "u", "exp": 2_000_000_000u64});
        let no_kid = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"two"),
        )
        .unwrap();
        let mut named = Header::new(Algorithm::HS256);
        named.kid = Some("b".to_owned());
        let with_kid = encode(&named, &claims, &EncodingKey::from_secret(b"two")).unwrap();
        std::fs::write(&jwks, set(&[("a", "one"), ("b", "two")])).unwrap();
        let jwt = Jwt::load(&config).unwrap();
        assert!(jwt.verify_at(no_kid.as_bytes(), 1_000_000_000).is_err());
        assert!(jwt.verify_at(with_kid.as_bytes(), 1_000_000_000).is_ok());
        std::fs::write(&jwks, set(&[("b", "two")])).unwrap();
        let jwt = Jwt::load(&config).unwrap();
        assert!(jwt.verify_at(no_kid.as_bytes(), 1_000_000_000).is_ok());
    }
}
