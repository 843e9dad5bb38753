//! RTCP compound packet views (RFC 3550 §6, RFC 4585, RFC 5104).
