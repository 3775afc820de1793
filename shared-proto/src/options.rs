//! Tags of the per-tunnel options a bind may carry ([`crate::TunnelOption`]).
//!
//! Each feature owns its tags and the encoding of its values; this list keeps them
//! from colliding. A relay refuses a bind with a critical tag it does not know, so a
//! newer client never believes an older relay enforces something it ignores.

/// Whether this build of the protocol knows `tag` (with or without the critical bit).
pub fn is_known(tag: u16) -> bool {
    KNOWN.contains(&(tag & !crate::TunnelOption::CRITICAL))
}

/// Delivery mode and offline behaviour ([`crate::delivery::Delivery`]); sent critical.
pub const DELIVERY: u16 = 0x0010;

/// Every tag this build knows, without the critical bit.
const KNOWN: &[u16] = &[DELIVERY];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tags_are_unknown() {
        assert!(!is_known(0x7fff));
        assert!(!is_known(0xffff));
        assert!(is_known(DELIVERY | crate::TunnelOption::CRITICAL));
    }
}
