//! US keyboard layout → PC/XT scan code set 1 (make codes), for the mock keyboard.

/// Left Shift make code.
pub const LEFT_SHIFT: u8 = 0x2A;

const UNSHIFTED: &str = "\x001234567890-=\x08\tqwertyuiop[]\n\0asdfghjkl;'`\0\\zxcvbnm,./";
const SHIFTED: &str = "\0!@#$%^&*()_+\0\0QWERTYUIOP{}\0\0ASDFGHJKL:\"~\0|ZXCVBNM<>?";

/// The set-1 make code of `c` and whether Shift is needed, on a US layout.
pub fn us_key(c: char) -> Option<(u8, bool)> {
    if c == ' ' {
        return Some((0x39, false));
    }
    if c == '\0' {
        return None;
    }
    // Position 0 stands for scan code 0x01 (Escape).
    let find = |s: &str| s.chars().position(|k| k == c).map(|i| (i + 1) as u8);
    find(UNSHIFTED)
        .map(|s| (s, false))
        .or_else(|| find(SHIFTED).map(|s| (s, true)))
}

#[cfg(test)]
mod tests {
    use super::us_key;

    #[test]
    fn known_codes() {
        assert_eq!(us_key('1'), Some((0x02, false)));
        assert_eq!(us_key('q'), Some((0x10, false)));
        assert_eq!(us_key('\n'), Some((0x1C, false)));
        assert_eq!(us_key('a'), Some((0x1E, false)));
        assert_eq!(us_key('A'), Some((0x1E, true)));
        assert_eq!(us_key('\\'), Some((0x2B, false)));
        assert_eq!(us_key('z'), Some((0x2C, false)));
        assert_eq!(us_key('/'), Some((0x35, false)));
        assert_eq!(us_key('?'), Some((0x35, true)));
        assert_eq!(us_key('"'), Some((0x28, true)));
        assert_eq!(us_key(' '), Some((0x39, false)));
        assert_eq!(us_key('é'), None);
    }
}
