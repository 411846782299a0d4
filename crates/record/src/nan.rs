//! serde_json writes a NaN as `null` (a component with no items has no value or interval, and
//! WikiText-2 is not on the 1-10 scale), but refuses `null` for an `f64` when reading. These
//! readers map `null` back to NaN so a results file can always be read back (by `bakeoff report`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

pub fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub fn pair_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<(f64, f64), D::Error> {
    let (a, b) = <(Option<f64>, Option<f64>)>::deserialize(d)?;
    Ok((a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN)))
}

pub fn map_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::eval::{Component, Metric};

    #[test]
    fn an_empty_component_round_trips() {
        let c = Component::new(
            "wikitext",
            "d",
            "m",
            "ppl",
            Metric::from_counts(0.0, 0),
            0.0,
        );
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(json.contains("null"), "{json}");
        let back: Result<Component, _> = serde_json::from_str(&json);
        let back = back.map_err(|e| e.to_string());
        assert!(
            back.as_ref()
                .is_ok_and(|b| b.score10.is_nan() && b.headline.value.is_nan()),
            "{back:?}"
        );
    }
}
