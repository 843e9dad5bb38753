//! H.264 `a=fmtp` parameters (RFC 6184 §8.1, §8.2.2): which profile a `profile-level-id`
//! names, and the parameters we answer with.
//!
//! The profile is not the first byte pair as text: RFC 6184 names a profile by
//! `profile_idc` plus some constraint flags, and encoders write the flags they do not care
//! about differently (x264 writes constrained baseline as `42c0..`, browsers as `42e0..`).
//! The table is the one WebRTC implementations use (libwebrtc `h264_profile_level_id.cc`).

use super::offer::fmtp_param;

/// RFC 6184's default when an offer has no `profile-level-id`: baseline, level 1.0.
const DEFAULT_PROFILE_LEVEL_ID: &str = "42000a";

/// The H.264 profiles WebRTC endpoints offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    ConstrainedHigh,
    High,
    PredictiveHigh444,
}

/// A parsed `profile-level-id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProfileLevel {
    pub profile: Profile,
    /// `level_idc` times two, with level 1b (`level_idc` 11 plus constraint_set3 in the
    /// baseline and main profiles) as 21, so that 1.0 < 1b < 1.1 compares as numbers.
    pub level: u16,
}

/// (profile_idc, mask of the profile-iop bits that matter, their value, profile).
const PROFILES: [(u8, u8, u8, Profile); 9] = [
    (0x42, 0b0100_1111, 0b0100_0000, Profile::ConstrainedBaseline),
    (0x4d, 0b1000_1111, 0b1000_0000, Profile::ConstrainedBaseline),
    (0x58, 0b1100_1111, 0b1100_0000, Profile::ConstrainedBaseline),
    (0x42, 0b0100_1111, 0b0000_0000, Profile::Baseline),
    (0x58, 0b1100_1111, 0b1000_0000, Profile::Baseline),
    (0x4d, 0b1010_1111, 0b0000_0000, Profile::Main),
    (0x64, 0b1111_1111, 0b0000_0000, Profile::High),
    (0x64, 0b1111_1111, 0b0000_1100, Profile::ConstrainedHigh),
    (0xf4, 0b1111_1111, 0b0000_0000, Profile::PredictiveHigh444),
];

/// The six hex digits of a `profile-level-id`; `None` for anything else or a profile we do
/// not know (then the codec is not negotiated: we could not tell a subscriber can decode it).
pub(super) fn parse(profile_level_id: &str) -> Option<ProfileLevel> {
    if profile_level_id.len() != 6 || !profile_level_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(profile_level_id.get(i..i + 2)?, 16).ok();
    let (idc, iop, level_idc) = (byte(0)?, byte(2)?, byte(4)?);
    let profile = PROFILES
        .iter()
        .find(|(p, mask, value, _)| *p == idc && iop & mask == *value)
        .map(|(_, _, _, profile)| *profile)?;
    let constraint_set3 = iop & 0x10 != 0;
    let level = if level_idc == 11 && constraint_set3 && idc != 0x64 && idc != 0xf4 {
        21
    } else {
        u16::from(level_idc) * 2
    };
    Some(ProfileLevel { profile, level })
}

/// Whether every decoder of profile `decoder` decodes every stream of profile `stream` (H.264
/// Annex A: constrained baseline streams are decodable by all profiles here; Main by High and
/// up; Baseline only by Baseline, its FMO and ASO being in no other; Constrained High by High
/// and up, it being High without B slices).
pub(super) fn decodes(decoder: Profile, stream: Profile) -> bool {
    use Profile::*;
    decoder == stream
        || match stream {
            ConstrainedBaseline => true,
            Main | ConstrainedHigh => matches!(decoder, High | PredictiveHigh444),
            High => decoder == PredictiveHigh444,
            Baseline | PredictiveHigh444 => false,
        }
}

/// The codec's `profile-level-id` (or RFC 6184's default), parsed.
pub(super) fn profile_level(fmtp: Option<&str>) -> Option<ProfileLevel> {
    parse(
        fmtp.and_then(|f| fmtp_param(f, "profile-level-id"))
            .unwrap_or(DEFAULT_PROFILE_LEVEL_ID),
    )
}

pub(super) fn packetization_mode(fmtp: Option<&str>) -> Option<&str> {
    fmtp.and_then(|f| fmtp_param(f, "packetization-mode"))
}

fn level_asymmetry_allowed(fmtp: Option<&str>) -> bool {
    fmtp.and_then(|f| fmtp_param(f, "level-asymmetry-allowed")) == Some("1")
}

/// Our `a=fmtp` for an H.264 entry we accept, rebuilt from the offered one (RFC 6184
/// §8.2.2): the offered profile-level-id as is (the profile must be the offered one; without
/// `level-asymmetry-allowed=1` on both sides the answer's level must not exceed the offer's,
/// and equal is what a forwarding node can honour either way), packetization-mode 1, and
/// `level-asymmetry-allowed=1` only when offered. `sprop-parameter-sets` and the like describe
/// the offerer's stream and are not echoed. `None` when the offer's `profile-level-id` does not
/// parse (such an entry is never accepted).
pub(super) fn answer_fmtp(offered: Option<&str>) -> Option<String> {
    let plid = offered
        .and_then(|f| fmtp_param(f, "profile-level-id"))
        .unwrap_or(DEFAULT_PROFILE_LEVEL_ID);
    parse(plid)?;
    let asymmetry = if level_asymmetry_allowed(offered) {
        "level-asymmetry-allowed=1;"
    } else {
        ""
    };
    Some(format!(
        "{asymmetry}packetization-mode=1;profile-level-id={}",
        plid.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(Profile, u16)> {
        parse(s).map(|pl| (pl.profile, pl.level))
    }

    /// The profile-level-ids WebRTC endpoints offer, and what encoders write in their SPS.
    #[test]
    fn profiles() {
        use Profile::*;
        // Browsers' constrained baseline, and x264's (constraint_set0+1, not set2).
        assert_eq!(p("42e01f"), Some((ConstrainedBaseline, 62)));
        assert_eq!(p("42c01f"), Some((ConstrainedBaseline, 62)));
        assert_eq!(p("42C01F"), Some((ConstrainedBaseline, 62)));
        // Main with constraint_set1 decodes as constrained baseline.
        assert_eq!(p("4de01f"), Some((ConstrainedBaseline, 62)));
        assert_eq!(p("42001f"), Some((Baseline, 62)));
        assert_eq!(p("4d001f"), Some((Main, 62)));
        assert_eq!(p("640c1f"), Some((ConstrainedHigh, 62)));
        assert_eq!(p("64001f"), Some((High, 62)));
        assert_eq!(p("640028"), Some((High, 80)));
        assert_eq!(p("f4001f"), Some((PredictiveHigh444, 62)));
        // Level 1b: level_idc 11 with constraint_set3 (RFC 6184 §8.1); without it, 1.1.
        assert_eq!(p("42f00b"), Some((ConstrainedBaseline, 21)));
        assert_eq!(p("42e00b"), Some((ConstrainedBaseline, 22)));
        assert!(p("42f00b").map(|x| x.1) > p("42e00a").map(|x| x.1));
        // Unknown profiles and reserved constraint bits; not six hex digits.
        for bad in [
            "6e001f", "7a001f", "420f1f", "64101f", "42e01", "42e01f0", "", "zze01f",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn which_decoder_decodes_which_stream() {
        use Profile::*;
        let all = [
            ConstrainedBaseline,
            Baseline,
            Main,
            ConstrainedHigh,
            High,
            PredictiveHigh444,
        ];
        for d in all {
            assert!(decodes(d, d));
            assert!(decodes(d, ConstrainedBaseline), "{d:?}");
        }
        assert!(decodes(High, Main) && decodes(High, ConstrainedHigh));
        assert!(decodes(PredictiveHigh444, High) && decodes(PredictiveHigh444, Main));
        assert!(!decodes(Main, Baseline) && !decodes(High, Baseline));
        assert!(!decodes(ConstrainedBaseline, Baseline));
        assert!(!decodes(Main, High) && !decodes(ConstrainedHigh, Main));
        assert!(!decodes(High, PredictiveHigh444));
    }

    #[test]
    fn default_profile_level_is_baseline_level_1() {
        assert_eq!(
            profile_level(None),
            Some(ProfileLevel {
                profile: Profile::Baseline,
                level: 20
            })
        );
        assert_eq!(
            profile_level(Some("packetization-mode=1")),
            profile_level(None)
        );
    }

    #[test]
    fn answer_keeps_profile_and_level_and_asymmetry_only_when_offered() {
        assert_eq!(
            answer_fmtp(Some(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42E01F"
            ))
            .as_deref(),
            Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
        );
        // GStreamer's: sprop-parameter-sets describe its stream, not what we receive.
        assert_eq!(
            answer_fmtp(Some(
                "packetization-mode=1;sprop-parameter-sets=Z0LAH9oFB+wFqDAwNSgAAAMACAAAAwD0eMGV,aM48gA==;\
                 profile-level-id=42c01f;level-asymmetry-allowed=1"
            ))
            .as_deref(),
            Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42c01f")
        );
        // Without level-asymmetry-allowed the level is the offer's: never higher.
        assert_eq!(
            answer_fmtp(Some("packetization-mode=1;profile-level-id=4d0028")).as_deref(),
            Some("packetization-mode=1;profile-level-id=4d0028")
        );
        assert_eq!(
            answer_fmtp(Some("packetization-mode=1")).as_deref(),
            Some("packetization-mode=1;profile-level-id=42000a")
        );
        assert_eq!(
            answer_fmtp(Some("packetization-mode=1;profile-level-id=6e001f")),
            None
        );
    }
}
