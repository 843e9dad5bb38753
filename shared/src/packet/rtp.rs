//! RTP header view (RFC 3550 §5.1, RFC 8285 header extensions).
