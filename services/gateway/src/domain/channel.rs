//! WebSocket channels and what each client action needs. Pure.
//!
//! A channel is `<kind>` or `<kind>:<name>`: `prices:<symbol>`, `chat:<session>`,
//! `cowork:<session>`, `media:<job>`, `healing`. Each kind names the scope a subscriber must
//! hold, and whether it belongs to a tenant. Tenant channels travel on the bus under the
//! tenant (`ws.tenant.<tenant>.<channel>`), platform-wide ones under `ws.public.<channel>`, so
//! two tenants with a session of the same name never see each other's messages and a
//! replica subscribes to everything with one `ws.>` subscription. Chat sessions belong to one
//! user: their channel travels under the owner too (`ws.tenant.<tenant>.<subject>.chat:<id>`,
//! [`Channel::subject_for`]), so another user of the tenant following `chat:<id>` follows their
//! own session of that name, never someone else's.
//!
//! Client actions (`subscribe`, `chat`, `trade`, ...) are authorised here, once per action,
//! against the scopes of the connection's current token: `read:prices` for prices,
//! `write:chat` to chat (and to follow a chat session), `write:trades` for trade intents,
//! `admin:*` for all of them.

use std::fmt;

use base64::Engine as _;
use liquid_auth::{any_grants, scopes};

/// Longest channel name accepted (kind, colon and name).
pub const MAX_CHANNEL_LEN: usize = 160;

/// Bus subject prefix of every WebSocket broadcast.
pub const SUBJECT_PREFIX: &str = "ws";

/// The kinds of channel the hub serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `prices:<symbol>`: market prices (platform-wide).
    Prices,
    /// `chat:<session>`: a chat session's stream (tenant).
    Chat,
    /// `cowork:<session>`: a cowork session's events (tenant).
    Cowork,
    /// `media:<job>`: a media job's progress (tenant).
    Media,
    /// `healing`: the healer's progress (platform-wide).
    Healing,
}

impl ChannelKind {
    fn parse(text: &str) -> Option<ChannelKind> {
        Some(match text {
            "prices" => ChannelKind::Prices,
            "chat" => ChannelKind::Chat,
            "cowork" => ChannelKind::Cowork,
            "media" => ChannelKind::Media,
            "healing" => ChannelKind::Healing,
            _ => return None,
        })
    }

    /// The name before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Prices => "prices",
            ChannelKind::Chat => "chat",
            ChannelKind::Cowork => "cowork",
            ChannelKind::Media => "media",
            ChannelKind::Healing => "healing",
        }
    }

    /// The scope a subscriber needs.
    pub fn read_scope(self) -> &'static str {
        match self {
            ChannelKind::Prices => scopes::READ_PRICES,
            ChannelKind::Chat => scopes::WRITE_CHAT,
            ChannelKind::Cowork => scopes::COWORK_READ,
            ChannelKind::Media => scopes::MEDIA_READ,
            ChannelKind::Healing => scopes::HEALER_READ,
        }
    }

    /// True when messages belong to one tenant.
    pub fn per_tenant(self) -> bool {
        matches!(
            self,
            ChannelKind::Chat | ChannelKind::Cowork | ChannelKind::Media
        )
    }

    /// True when messages belong to one user of the tenant (the token's subject).
    pub fn per_owner(self) -> bool {
        matches!(self, ChannelKind::Chat)
    }

    /// True when the kind takes a name after the colon.
    fn named(self) -> bool {
        !matches!(self, ChannelKind::Healing)
    }
}

/// A parsed channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Channel {
    kind: ChannelKind,
    name: Option<String>,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Unknown kind.
    #[error(
        "unknown channel kind in `{0}`; use prices:<symbol>, chat:<session>, cowork:<session>, media:<job> or healing"
    )]
    UnknownKind(String),
    /// Shape or characters wrong.
    #[error("channel `{0}` is malformed: {1}")]
    Malformed(String, &'static str),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

impl Channel {
    /// Parses `kind` or `kind:name`; names are ASCII letters, digits, `-` and `_`.
    pub fn parse(text: &str) -> Result<Channel, ChannelError> {
        if text.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::Malformed(
                text.chars().take(40).collect(),
                "too long",
            ));
        }
        let (kind_text, name) = match text.split_once(':') {
            Some((k, n)) => (k, Some(n)),
            None => (text, None),
        };
        let kind = ChannelKind::parse(kind_text)
            .ok_or_else(|| ChannelError::UnknownKind(text.to_owned()))?;
        match (kind.named(), name) {
            (true, Some(n)) if valid_name(n) => Ok(Channel {
                kind,
                name: Some(n.to_owned()),
            }),
            (true, Some(_)) => Err(ChannelError::Malformed(
                text.to_owned(),
                "names are letters, digits, `-` and `_`",
            )),
            (true, None) => Err(ChannelError::Malformed(
                text.to_owned(),
                "this kind needs a name after `:`",
            )),
            (false, None) => Ok(Channel { kind, name: None }),
            (false, Some(_)) => Err(ChannelError::Malformed(
                text.to_owned(),
                "this kind takes no name",
            )),
        }
    }

    /// A prices channel for `symbol` (the symbol must be a valid name).
    pub fn prices(symbol: &str) -> Result<Channel, ChannelError> {
        Channel::parse(&format!("prices:{symbol}"))
    }

    /// The kind.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The name after the colon, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The bus subject carrying this channel's messages for `owner` (a token's subject) of
    /// `tenant`: the owner counts for per-owner kinds (chat) only, the tenant for tenant kinds.
    pub fn subject_for(&self, tenant: &str, owner: &str) -> String {
        if self.kind.per_owner() {
            format!(
                "{SUBJECT_PREFIX}.tenant.{}.{}.{self}",
                encode_tenant(tenant),
                encode_tenant(owner)
            )
        } else {
            self.subject(tenant)
        }
    }

    /// The bus subject carrying this channel's messages for `tenant` (ignored for
    /// platform-wide kinds). For per-owner kinds this is the tenant-wide subject no client
    /// follows; use [`Channel::subject_for`].
    pub fn subject(&self, tenant: &str) -> String {
        if self.kind.per_tenant() {
            format!("{SUBJECT_PREFIX}.tenant.{}.{self}", encode_tenant(tenant))
        } else {
            format!("{SUBJECT_PREFIX}.public.{self}")
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{}:{name}", self.kind.as_str()),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

/// A tenant as one bus subject token: as is when it is letters, digits, `-` and `_`;
/// otherwise `~` and its unpadded base64url form (which never starts with `~`, so the two
/// never collide).
pub fn encode_tenant(tenant: &str) -> String {
    if valid_name(tenant) {
        tenant.to_owned()
    } else {
        format!(
            "~{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tenant)
        )
    }
}

/// What a client may ask for over the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Follow a channel.
    Subscribe(Channel),
    /// Stop following a channel.
    Unsubscribe(Channel),
    /// Send a chat message.
    Chat,
    /// Send a trade intent.
    Trade,
    /// Replace the connection's token.
    Auth,
    /// Application-level ping.
    Ping,
}

impl Action {
    /// The scope this action needs, if any.
    pub fn required_scope(&self) -> Option<&'static str> {
        match self {
            Action::Subscribe(channel) => Some(channel.kind().read_scope()),
            Action::Chat => Some(scopes::WRITE_CHAT),
            Action::Trade => Some(scopes::WRITE_TRADES),
            Action::Unsubscribe(_) | Action::Auth | Action::Ping => None,
        }
    }
}

/// `Ok` when `granted` covers what `action` needs, else the missing scope.
pub fn authorize<'a>(
    action: &Action,
    granted: impl IntoIterator<Item = &'a str>,
) -> Result<(), &'static str> {
    match action.required_scope() {
        Some(needed) if !any_grants(granted, needed) => Err(needed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_and_print_back() {
        for text in [
            "prices:BTC-USD",
            "chat:s_1",
            "cowork:0190",
            "media:job-9",
            "healing",
        ] {
            assert_eq!(Channel::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            Channel::parse("prices:ETH").unwrap().kind(),
            ChannelKind::Prices
        );
        assert_eq!(Channel::parse("prices:ETH").unwrap().name(), Some("ETH"));
    }

    #[test]
    fn malformed_channels_are_refused_with_a_reason() {
        assert!(matches!(
            Channel::parse("stocks:X"),
            Err(ChannelError::UnknownKind(_))
        ));
        for bad in [
            "prices",
            "prices:",
            "prices:a.b",
            "prices:a b",
            "prices:*",
            "prices:>",
            "chat:a:b",
            "healing:x",
            "",
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Channel::parse(&format!("chat:{}", "x".repeat(MAX_CHANNEL_LEN))).is_err());
    }

    #[test]
    fn tenant_channels_are_separated_by_tenant_on_the_bus() {
        let chat = Channel::parse("chat:s1").unwrap();
        assert_eq!(chat.subject("acme"), "ws.tenant.acme.chat:s1");
        assert_ne!(chat.subject("acme"), chat.subject("globex"));
        let prices = Channel::parse("prices:BTC").unwrap();
        assert_eq!(prices.subject("acme"), "ws.public.prices:BTC");
        assert_eq!(prices.subject("acme"), prices.subject("globex"));
    }

    #[test]
    fn chat_channels_are_separated_by_owner_on_the_bus() {
        let chat = Channel::parse("chat:s1").unwrap();
        assert_eq!(
            chat.subject_for("acme", "alice"),
            "ws.tenant.acme.alice.chat:s1"
        );
        assert_ne!(
            chat.subject_for("acme", "alice"),
            chat.subject_for("acme", "bob")
        );
        assert_ne!(chat.subject_for("acme", "alice"), chat.subject("acme"));
        let odd = chat.subject_for("acme", "user@example.com");
        liquid_bus::subject::validate(&odd, false).unwrap();
        assert!(
            odd.ends_with(".chat:s1"),
            "the channel stays the last token"
        );
        let cowork = Channel::parse("cowork:s1").unwrap();
        assert_eq!(cowork.subject_for("acme", "alice"), cowork.subject("acme"));
    }

    #[test]
    fn odd_tenants_become_one_safe_token_without_collisions() {
        assert_eq!(encode_tenant("acme-1"), "acme-1");
        let odd = encode_tenant("a.b c>*");
        assert!(odd.starts_with('~'));
        assert!(
            odd[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(encode_tenant("~x"), "~x", "a literal ~ is encoded too");
        let subject = Channel::parse("chat:s")
            .unwrap()
            .subject("user@example.com");
        liquid_bus::subject::validate(&subject, false).unwrap();
    }

    #[test]
    fn every_action_needs_its_scope_and_admin_covers_all() {
        let prices = Action::Subscribe(Channel::parse("prices:BTC").unwrap());
        let chat_follow = Action::Subscribe(Channel::parse("chat:s1").unwrap());
        let cowork = Action::Subscribe(Channel::parse("cowork:s1").unwrap());
        assert_eq!(authorize(&prices, ["read:prices"]), Ok(()));
        assert_eq!(authorize(&prices, ["write:chat"]), Err("read:prices"));
        assert_eq!(authorize(&Action::Chat, ["read:prices"]), Err("write:chat"));
        assert_eq!(authorize(&Action::Chat, ["write:chat"]), Ok(()));
        assert_eq!(authorize(&chat_follow, ["write:chat"]), Ok(()));
        assert_eq!(
            authorize(&Action::Trade, ["write:chat", "read:prices"]),
            Err("write:trades")
        );
        assert_eq!(authorize(&Action::Trade, ["write:trades"]), Ok(()));
        assert_eq!(authorize(&cowork, ["cowork:*"]), Ok(()));
        assert_eq!(authorize(&cowork, ["media:read"]), Err("cowork:read"));
        for action in [
            &prices,
            &chat_follow,
            &cowork,
            &Action::Chat,
            &Action::Trade,
        ] {
            assert_eq!(authorize(action, ["admin:*"]), Ok(()), "{action:?}");
            assert!(authorize(action, []).is_err(), "{action:?}");
        }
        for free in [
            Action::Ping,
            Action::Auth,
            Action::Unsubscribe(Channel::parse("healing").unwrap()),
        ] {
            assert_eq!(authorize(&free, []), Ok(()));
        }
    }
}
