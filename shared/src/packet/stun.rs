//! STUN message view (RFC 8489).
