//! Tags of the per-tunnel options a bind may carry ([`crate::TunnelOption`]).
//!
//! Each feature owns its tags and the encoding of its values; this list keeps them
//! from colliding. A relay refuses a bind with a critical tag it does not know, so a
//! newer client never believes an older relay enforces something it ignores.

/// Whether this build of the protocol knows `tag` (with or without the critical bit).
pub fn is_known(tag: u16) -> bool {
    KNOWN.contains(&(tag & !crate::TunnelOption::CRITICAL))
}

/// Edge policy the relay enforces for the tunnel (basic auth, IP lists, header
/// edits, body limit). Sent with [`crate::TunnelOption::CRITICAL`]; the value is the
/// policy as compact JSON, owned by `relay_server::policy::EdgePolicy`.
pub const EDGE_POLICY: u16 = 0x0001;

/// The client understands [`crate::ServerMessage::ExchangeRefused`] notices on the
/// control stream. Not critical, empty value: a relay only sends notices to tunnels
/// whose bind carried it, so older clients never see a message they cannot decode.
pub const REFUSAL_NOTICES: u16 = 0x0002;

/// Delivery mode and offline behaviour ([`crate::delivery::Delivery`]); sent critical.
pub const DELIVERY: u16 = 0x0010;

/// Every tag this build knows, without the critical bit.
const KNOWN: &[u16] = &[EDGE_POLICY, REFUSAL_NOTICES, DELIVERY];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tags_are_unknown() {
        assert!(!is_known(0x7fff));
        assert!(!is_known(0xffff));
        assert!(is_known(DELIVERY | crate::TunnelOption::CRITICAL));
    }

    #[test]
    fn feature_tags_are_known_with_or_without_the_critical_bit() {
        assert!(is_known(EDGE_POLICY));
        assert!(is_known(EDGE_POLICY | crate::TunnelOption::CRITICAL));
        assert!(is_known(REFUSAL_NOTICES));
    }
}
