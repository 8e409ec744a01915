//! Compact JSON the way Go's `json.Marshal` prints a `map[string]interface{}`: object keys
//! sorted by bytes at every level, `<`, `>`, `&`, U+2028 and U+2029 escaped, numbers as
//! Go prints the float64 it decoded them into. The saved delegate config is then
//! byte-identical to the Go plugin's, whatever serde_json features other crates enable
//! (`preserve_order` would otherwise change the key order workspace-wide).

use serde_json::{Number, Value};

pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_value(&mut out, v);
    out.into_bytes()
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Go decodes every JSON number into a float64 and prints it back in the shortest form,
/// with an exponent only outside [1e-6, 1e21). Integers that exceed f64 precision are kept
/// exact here rather than rounded as Go would: no flannel or bridge key holds one.
fn write_number(out: &mut String, n: &Number) {
    if n.is_i64() || n.is_u64() {
        out.push_str(&n.to_string());
        return;
    }
    let Some(f) = n.as_f64().filter(|f| f.is_finite()) else {
        out.push_str(&n.to_string());
        return;
    };
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        // f64's Display is the shortest round-trip form without an exponent and without a
        // ".0" (serde_json's own printing would write "1000.0").
        out.push_str(&f.to_string());
    } else {
        // Rust prints 1e21 and 1e-7; Go prints 1e+21 and 1e-07 -> "1e-7" after its cleanup.
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mant, exp)) if !exp.starts_with('-') => {
                out.push_str(mant);
                out.push_str("e+");
                out.push_str(exp);
            }
            _ => out.push_str(&s),
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Go's HTML-safe escaping, on by default in json.Marshal.
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: Value) -> String {
        String::from_utf8(to_vec(&v)).unwrap()
    }

    #[test]
    fn sorted_compact() {
        assert_eq!(
            s(json!({"b": 1, "a": {"d": [1, {"z": null, "y": true}], "c": "x"}, "B": false})),
            r#"{"B":false,"a":{"c":"x","d":[1,{"y":true,"z":null}]},"b":1}"#
        );
    }

    #[test]
    fn go_string_escapes() {
        assert_eq!(
            s(json!("a<b>&\"\\\n\r\t\u{8}\u{c}\u{1}\u{2028}é")),
            r#""a\u003cb\u003e\u0026\"\\\n\r\t\b\f\u0001\u2028é""#
        );
    }

    #[test]
    fn go_number_forms() {
        let cases = [
            (json!(1450), "1450"),
            (json!(-3), "-3"),
            (json!(1.5), "1.5"),
            (json!(1000.0), "1000"),
            (json!(0.0), "0"),
            (json!(1e21), "1e+21"),
            (json!(1e-7), "1e-7"),
            (json!(0.000001), "0.000001"),
        ];
        for (v, want) in cases {
            assert_eq!(s(v.clone()), want, "{v}");
        }
    }
}
