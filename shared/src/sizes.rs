//! Fixed sizes of a stream's per-track state, shared by the configuration (which checks
//! port ranges against them) and the commands (whose specs are bounded by them); re-exported
//! from [`crate::command`].

/// Most tracks (SSRCs) one published stream carries: audio, video, and room for RTX or
/// simulcast layers later. Fixed so per-stream state is a flat array, never a map.
pub const MAX_TRACKS: usize = 4;

/// Most simulcast layers (RFC 8853 encodings) one track carries: browsers send at most 3.
pub const MAX_LAYERS: usize = 3;

/// Longest rid the data plane matches (RFC 8851 allows 255; browsers and apps use 1–2
/// characters). A longer one is left out of the spec and its layer is found by SSRC only.
pub const MAX_RID: usize = 16;

/// Most payload-type pairs one subscriber's map holds.
pub const MAX_PT_MAP: usize = 16;
