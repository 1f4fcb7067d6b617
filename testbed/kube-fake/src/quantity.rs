//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`), read as whole milli-units the
//! way the scheduler compares them.

/// A quantity in thousandths of its unit (millicores for CPU, millibytes for memory), rounded
/// up like `Quantity.MilliValue()`; `None` when the text is not a quantity.
pub fn parse_milli(text: &str) -> Option<i128> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
        || fraction.len() > 18
    {
        return None;
    }
    let mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
    let mut numerator = mantissa * 1000;
    let mut denominator: i128 = 10i128.pow(u32::try_from(fraction.len()).ok()?);
    let (multiplier, divisor) = suffix_scale(suffix)?;
    numerator = numerator.checked_mul(multiplier)?;
    denominator = denominator.checked_mul(divisor)?;
    let milli = (numerator + denominator - 1) / denominator;
    Some(if negative { -milli } else { milli })
}

/// The suffix as a fraction `multiplier / divisor`.
fn suffix_scale(suffix: &str) -> Option<(i128, i128)> {
    let binary = |power: u32| Some((1i128 << (10 * power), 1));
    let decimal = |exponent: i32| {
        if exponent >= 0 {
            Some((10i128.checked_pow(exponent.unsigned_abs())?, 1))
        } else {
            Some((1, 10i128.checked_pow(exponent.unsigned_abs())?))
        }
    };
    match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            let value: i32 = digits.parse().ok()?;
            if value.abs() > 18 {
                return None;
            }
            decimal(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_milli;

    #[test]
    fn reads_the_suffixes_kubernetes_accepts() {
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_milli("16Gi"), Some(16 * (1 << 30) * 1000));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("100n"), Some(1));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Qi"), None);
        assert_eq!(parse_milli(""), None);
    }
}
