//! Server-side apply of the objects a plugin owns, under one field manager, skipped when
//! the live object already holds everything we would apply: the steady state makes no
//! write, and drift (a field we set, changed by someone else) is repaired.

use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "hector-operator";

/// Whether every field of `desired` has the same value in `live`. Lists match element by
/// element; fields only `live` has (defaults, other managers') are ignored, as server-side
/// apply leaves them alone too. Resource quantities compare by value (see [`difference`]).
pub fn contains(live: &Value, desired: &Value) -> bool {
    difference(live, desired).is_none()
}

/// The path of the first field of `desired` that `live` does not hold, if any.
///
/// Quantity-typed fields (the values of `resources.requests`/`resources.limits`, a Pod's
/// `spec.overhead`, `emptyDir.sizeLimit`, `resourceFieldRef.divisor`) compare by value: the API server stores them in its
/// canonical spelling (`0.5` becomes `500m`), and a textual comparison would patch the
/// object on every reconcile. Every other string compares exactly.
pub fn difference(live: &Value, desired: &Value) -> Option<String> {
    diff(live, desired, Place::default())
}

/// Where in the object a value sits: the last three keys of its path (list indexes count).
#[derive(Clone, Copy, Default)]
struct Place<'a> {
    grandparent: Option<&'a str>,
    parent: Option<&'a str>,
    key: Option<&'a str>,
}

impl<'a> Place<'a> {
    fn child(self, key: &'a str) -> Place<'a> {
        Place {
            grandparent: self.parent,
            parent: self.key,
            key: Some(key),
        }
    }

    /// Whether Kubernetes types the value here as a `resource.Quantity`.
    fn is_quantity(self) -> bool {
        matches!(
            (self.grandparent, self.parent, self.key),
            (Some("resources"), Some("requests" | "limits"), Some(_))
                | (Some("spec"), Some("overhead"), Some(_))
                | (_, Some("emptyDir"), Some("sizeLimit"))
                | (_, Some("resourceFieldRef"), Some("divisor"))
        )
    }
}

fn diff(live: &Value, desired: &Value, place: Place<'_>) -> Option<String> {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(k, dv)| match l.get(k) {
            Some(lv) => diff(lv, dv, place.child(k)).map(|p| join(k, &p)),
            // The API server omits zero values (Go's `omitempty`): absent equals false, 0, "".
            None => (!is_zero(dv)).then(|| k.clone()),
        }),
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => {
            d.iter().zip(l).enumerate().find_map(|(i, (dv, lv))| {
                let index = i.to_string();
                diff(lv, dv, place.child(&index)).map(|p| join(&index, &p))
            })
        }
        (Value::Null, _) => None,
        (d, l) if d == l => None,
        (Value::String(d), Value::String(l)) if place.is_quantity() && same_quantity(d, l) => None,
        _ => Some(String::new()),
    }
}

fn join(head: &str, tail: &str) -> String {
    if tail.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{tail}")
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

/// Applies `desired` unless `live` already contains it; returns whether it wrote.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    live: Option<&K>,
) -> Result<bool, kube::Error>
where
    K: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    if let Some(live) = live {
        let (Ok(l), Ok(d)) = (serde_json::to_value(live), serde_json::to_value(desired)) else {
            return Err(kube::Error::SerdeError(serde::de::Error::custom(
                "object does not serialize",
            )));
        };
        match difference(&l, &d) {
            None => return Ok(false),
            Some(path) => tracing::info!(name, field = %path, "live object differs; applying"),
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(true)
}

/// Why a string is not a Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// No digits where the number should be.
    #[error("{0:?} has no number")]
    NoNumber(String),
    /// Not one of the suffixes Kubernetes knows.
    #[error("{0:?} has an unknown suffix")]
    BadSuffix(String),
    /// More digits or a larger exponent than this exact comparison handles.
    #[error("{0:?} is too large to compare exactly")]
    TooLarge(String),
}

/// The exact value of a Kubernetes quantity, `sign × odd × 2^twos × 5^fives` with `odd`
/// divisible by neither 2 nor 5 (zero is `0 × 2^0 × 5^0`). Every rational with a
/// power-of-ten-and-two denominator has exactly one such form, so equal values have equal
/// fields and no arithmetic can round or overflow when comparing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantityValue {
    negative: bool,
    odd: u128,
    twos: i64,
    fives: i64,
}

impl QuantityValue {
    /// Parses `<sign><digits>[.<digits>]<suffix>`, the suffix being one of the decimal SI
    /// `n u m "" k M G T P E`, the binary `Ki Mi Gi Ti Pi Ei` or a decimal exponent
    /// `e<int>`/`E<int>`, as Kubernetes' `resource.Quantity` accepts them.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(QuantityError::NoNumber(text.to_string()));
        }
        let too_large = || QuantityError::TooLarge(text.to_string());
        let mut mantissa: u128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(too_large)?;
        }
        let fraction_digits = i64::try_from(fraction.len()).map_err(|_| too_large())?;
        let (tens, twos) =
            suffix_exponents(suffix).ok_or_else(|| QuantityError::BadSuffix(text.to_string()))?;
        if mantissa == 0 {
            return Ok(Self {
                negative: false,
                odd: 0,
                twos: 0,
                fives: 0,
            });
        }
        // 10^n = 2^n × 5^n.
        let tens = tens.checked_sub(fraction_digits).ok_or_else(too_large)?;
        let mut value = Self {
            negative,
            odd: mantissa,
            twos: twos.checked_add(tens).ok_or_else(too_large)?,
            fives: tens,
        };
        while value.odd.is_multiple_of(2) {
            value.odd /= 2;
            value.twos += 1;
        }
        while value.odd.is_multiple_of(5) {
            value.odd /= 5;
            value.fives += 1;
        }
        Ok(value)
    }
}

/// The powers of ten and of two a quantity suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i64, i64)> {
    let decimal = |tens| Some((tens, 0));
    let binary = |twos| Some((0, twos));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = exponent
                .strip_prefix('-')
                .or_else(|| exponent.strip_prefix('+'))
                .unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Kubernetes itself refuses exponents this large; bounding them keeps the
            // exponent arithmetic above far from overflowing.
            let tens: i64 = exponent.parse().ok()?;
            (tens.abs() <= 1_000_000).then_some((tens, 0))
        }
    }
}

/// Whether two strings are Kubernetes quantities of the same value (`0.5` and `500m`,
/// `1Gi` and `1073741824`). Strings that do not parse are never the same quantity.
pub fn same_quantity(a: &str, b: &str) -> bool {
    match (QuantityValue::parse(a), QuantityValue::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift() {
        let desired = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        let live = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "p", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}},
            "status": {"readyReplicas": 1}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        let edited = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "b"}]}}});
        assert!(!contains(&edited, &desired));
        let scaled = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        assert!(!contains(&scaled, &desired));
        let extra_container = json!({"spec": {"replicas": 1, "template": {"containers": [
            {"name": "p", "image": "a"}, {"name": "x"}]}}});
        assert!(!contains(&extra_container, &desired));
        let no_labels = json!({"metadata": {}});
        assert!(!contains(
            &no_labels,
            &json!({"metadata": {"labels": {"a": "b"}}})
        ));
        assert!(contains(&no_labels, &json!({"metadata": {"labels": {}}})));
    }

    #[test]
    fn zero_values_the_server_omits_are_not_drift() {
        let desired = json!({"volumeMounts": [{"name": "tmp", "readOnly": false, "subPath": ""}]});
        let live = json!({"volumeMounts": [{"name": "tmp"}]});
        assert!(contains(&live, &desired));
        let set = json!({"volumeMounts": [{"name": "tmp", "readOnly": true}]});
        assert!(!contains(&live, &set));
    }

    #[test]
    fn quantities_parse_to_exact_values() {
        let same = [
            ("0.5", "500m"),
            ("1Gi", "1073741824"),
            ("1e3", "1k"),
            ("1E3", "1000"),
            ("1.5Gi", "1536Mi"),
            ("1", "1000m"),
            ("+2", "2.000"),
            ("100m", ".1"),
            ("0", "0Gi"),
            ("-0", "0"),
            ("1Ki", "1.024k"),
            ("1E", "1e18"),
            ("250u", "250000n"),
            ("12e-1", "1200m"),
            ("-1.5", "-1500m"),
        ];
        for (a, b) in same {
            assert!(same_quantity(a, b), "{a} = {b}");
            assert!(same_quantity(b, a), "{b} = {a}");
        }
        let different = [
            ("100m", "0.2"),
            ("1Gi", "1G"),
            ("1M", "1m"),
            ("1Mi", "1000Ki"),
            ("-1", "1"),
            ("1n", "0"),
            ("3", "3.0000000000000000000000000001"),
        ];
        for (a, b) in different {
            assert!(!same_quantity(a, b), "{a} != {b}");
        }
        for bad in [
            "", "-", ".", "1.2.3", "1 Gi", "1Gb", "e3", "1e", "1e+", "Gi", "1x",
        ] {
            assert!(
                QuantityValue::parse(bad).is_err(),
                "{bad:?} is not a quantity"
            );
        }
        assert!(
            !same_quantity("x", "x"),
            "unparsable strings are not quantities"
        );
        assert_eq!(
            QuantityValue::parse("1e9999999999"),
            Err(QuantityError::BadSuffix("1e9999999999".into()))
        );
        assert_eq!(
            QuantityValue::parse(&"9".repeat(40)),
            Err(QuantityError::TooLarge("9".repeat(40)))
        );
    }

    #[test]
    fn resource_quantities_compare_by_value_and_other_strings_exactly() {
        let desired = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "p", "resources": {
                "requests": {"cpu": "0.5", "memory": "1Gi"},
                "limits": {"memory": "1.5Gi"}}}],
            "overhead": {"cpu": "0.1"},
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]}}}});
        let live = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "p", "resources": {
                "requests": {"cpu": "500m", "memory": "1073741824"},
                "limits": {"memory": "1536Mi"}}}],
            "overhead": {"cpu": "100m"},
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1073741824"}}]}}}});
        assert_eq!(difference(&live, &desired), None);
        let mut changed = live.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] =
            json!("200m");
        assert_eq!(
            difference(&changed, &desired).as_deref(),
            Some("spec.template.spec.containers.0.resources.requests.cpu")
        );
        // The same spellings elsewhere are plain strings.
        let env = |v: &str| json!({"env": [{"name": "REPLICAS", "value": v}]});
        assert!(!contains(&env("1.0"), &env("1")));
        let data = |v: &str| json!({"data": {"limits": v, "requests": v, "sizeLimit": v}});
        assert!(!contains(&data("1000m"), &data("1")));
        let not_resources = json!({"spec": {"limits": {"cpu": "1"}}});
        assert!(!contains(
            &json!({"spec": {"limits": {"cpu": "1.0"}}}),
            &not_resources
        ));
    }
}
