//! Who may subscribe and publish where (protocol v1, "Channels"), checked in the spec's
//! order: channel name, namespace, permission.

use std::sync::Arc;

use crate::auth::Claims;
use crate::channel::{ChannelName, Namespace, Namespaces, any_match};
use crate::protocol::{ErrorCode, ErrorReply};

/// Parses the name and finds its namespace: `bad_request`, then `not_found`.
pub fn resolve(
    namespaces: &Namespaces,
    channel: &str,
) -> Result<(ChannelName, Arc<Namespace>), ErrorReply> {
    let name = ChannelName::parse(channel)
        .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
    let ns = namespaces.resolve(&name).cloned().ok_or_else(|| {
        let message = match name.namespace() {
            Some(ns) => format!("namespace {ns:?} of channel {name} is not configured on this server"),
            None => format!(
                "channel {name} has no namespace and this server has no default namespace; use a name like \"chat:{name}\""
            ),
        };
        ErrorReply::new(ErrorCode::NotFound, message)
    })?;
    Ok((name, ns))
}

/// May the token holder subscribe to (or read presence and history of) this channel?
pub fn can_subscribe(
    ns: &Namespace,
    channel: &ChannelName,
    claims: &Claims,
) -> Result<(), ErrorReply> {
    if ns.config.personal {
        let own = channel
            .as_str()
            .split_once(':')
            .is_some_and(|(_, user)| user == &*claims.sub);
        return if own {
            Ok(())
        } else {
            Err(ErrorReply::new(
                ErrorCode::Forbidden,
                format!(
                    "{channel} is a personal channel of another user; you may use {}:{}",
                    ns.name, claims.sub
                ),
            ))
        };
    }
    if ns.config.public || any_match(&claims.channels, channel) {
        return Ok(());
    }
    Err(ErrorReply::new(
        ErrorCode::Forbidden,
        format!("your token's `channels` claim does not grant {channel}"),
    ))
}

/// May the token holder publish to this channel from a client connection?
pub fn can_publish(
    ns: &Namespace,
    channel: &ChannelName,
    claims: &Claims,
) -> Result<(), ErrorReply> {
    if !ns.config.allow_publish {
        return Err(ErrorReply::new(
            ErrorCode::Forbidden,
            format!(
                "clients may not publish in namespace {:?}; publish from a backend through the server API",
                ns.name
            ),
        ));
    }
    match &claims.publish {
        Some(patterns) if any_match(patterns, channel) => Ok(()),
        Some(_) => Err(ErrorReply::new(
            ErrorCode::Forbidden,
            format!("your token's `publish` claim does not grant {channel}"),
        )),
        None => can_subscribe(ns, channel, claims).map_err(|_| {
            ErrorReply::new(
                ErrorCode::Forbidden,
                format!("your token grants neither publishing nor subscribing to {channel}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn claims(sub: &str, channels: &[&str], publish: Option<&[&str]>) -> Claims {
        Claims {
            sub: sub.into(),
            exp: 0,
            iat: None,
            channels: channels.iter().map(|s| s.to_string()).collect(),
            publish: publish.map(|p| p.iter().map(|s| s.to_string()).collect()),
            info: None,
        }
    }

    fn check(channel: &str) -> Result<(ChannelName, Arc<Namespace>), ErrorReply> {
        {
            let c = Config::default();
            resolve(
                &Namespaces::new(&c.namespaces, &c.default_namespace),
                channel,
            )
        }
    }

    #[test]
    fn order_is_name_then_namespace() {
        assert_eq!(check("bad name").unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(check("nope:x").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(check("lobby").unwrap_err().code, ErrorCode::NotFound);
        assert!(check("chat:x").is_ok());
    }

    #[test]
    fn personal_public_and_patterns() {
        let alice = claims("alice", &["chat:*"], None);
        let (ch, ns) = check("user:alice").unwrap();
        assert!(can_subscribe(&ns, &ch, &alice).is_ok());
        let (ch, ns) = check("user:bob").unwrap();
        assert_eq!(
            can_subscribe(&ns, &ch, &alice).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let (ch, ns) = check("news:today").unwrap();
        assert!(can_subscribe(&ns, &ch, &alice).is_ok());
        assert_eq!(
            can_publish(&ns, &ch, &alice).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let (ch, ns) = check("chat:lobby").unwrap();
        assert!(can_publish(&ns, &ch, &alice).is_ok());
        let reader = claims("r", &["chat:*"], Some(&["chat:own"]));
        assert!(can_subscribe(&ns, &ch, &reader).is_ok());
        assert_eq!(
            can_publish(&ns, &ch, &reader).unwrap_err().code,
            ErrorCode::Forbidden
        );
        let nobody = claims("n", &[], None);
        assert_eq!(
            can_subscribe(&ns, &ch, &nobody).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
