//! A validator of CloudWatch Embedded Metric Format lines, written from the specification
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>,
//! its JSON schema, and the CloudWatch API's limits it refers to), not from the services' code.
//! Each rule below names the sentence it checks.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// "The embedded metric format is subject to the same limits as standard CloudWatch Logs
/// events": 256 KB in the spec's older text, 1 MB now; the smaller is checked.
const MAX_EVENT_BYTES: usize = 256 * 1024;
/// "This array MUST NOT contain more than 100 MetricDefinition objects."
const MAX_METRICS: usize = 100;
/// A DimensionSet holds at most 30 dimension keys (9 in the spec's older text, 30 in the
/// CloudWatch API's `Dimensions` since).
const MAX_DIMENSIONS: usize = 30;
/// "Numeric array metric targets MUST NOT have more than 100 members."
const MAX_VALUES: usize = 100;
/// The schema's unit pattern (the units of `MetricDatum`).
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// What a valid line declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// Each directive's namespace.
    pub namespaces: Vec<String>,
    /// Each directive's dimension sets.
    pub dimensions: Vec<Vec<Vec<String>>>,
    /// Every metric, with its unit.
    pub metrics: Vec<(String, String)>,
}

/// Checks `line` (one stdout line, without its newline) against every rule; returns what it
/// declares, or the first rule broken.
pub fn validate(line: &str) -> Result<Declared, String> {
    if line.len() > MAX_EVENT_BYTES {
        return Err(format!("{} bytes, above the event limit", line.len()));
    }
    // "The LogEvent message MUST be a valid JSON object with no additional data at the beginning
    // or end of the LogEvent message string."
    let root: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
    let root = root.as_object().ok_or("the root is not an object")?;
    // "Embedded metric format documents MUST contain the following top-level member on the root
    // node": `_aws`, a Metadata object.
    let metadata = object(root.get("_aws"), "_aws")?;
    // The metadata "MUST contain" CloudWatchMetrics; the schema requires Timestamp too.
    only_members(
        metadata,
        &["CloudWatchMetrics", "Timestamp", "LogGroupName"],
        "_aws",
    )?;
    // "Timestamp — ... MUST be expressed as the number of milliseconds after Jan 1, 1970";
    // the schema says integer.
    let timestamp = metadata
        .get("Timestamp")
        .and_then(Value::as_u64)
        .ok_or("_aws.Timestamp is not an integer")?;
    check_timestamp(timestamp)?;
    let directives = metadata
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics is not an array")?;
    let mut declared = Declared {
        namespaces: Vec::new(),
        dimensions: Vec::new(),
        metrics: Vec::new(),
    };
    for directive in directives {
        check_directive(
            root,
            object(Some(directive), "a MetricDirective")?,
            &mut declared,
        )?;
    }
    Ok(declared)
}

fn object<'a>(value: Option<&'a Value>, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{what} is not an object"))
}

/// "Unless otherwise noted, objects defined by this specification MUST NOT contain any
/// additional members."
fn only_members(object: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(format!(
            "{what} has a member the spec does not define: {key}"
        )),
        None => Ok(()),
    }
}

/// A metric's timestamp must be near now: CloudWatch takes data points from two weeks ago
/// to two hours ahead; lines written by a running process are within seconds.
fn check_timestamp(timestamp: u64) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    if timestamp.abs_diff(now) > 60 * 60 * 1000 {
        return Err(format!("_aws.Timestamp {timestamp} is not now ({now})"));
    }
    Ok(())
}

/// A string of 1 to 255 characters, as the schema's `minLength`/`maxLength` say for the
/// namespace, dimension references and metric names.
fn name<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("{what} is not a string"))?;
    if text.is_empty() || text.chars().count() > 255 {
        return Err(format!("{what} {text:?} is not 1 to 255 characters"));
    }
    Ok(text)
}

fn check_directive(
    root: &Map<String, Value>,
    directive: &Map<String, Value>,
    declared: &mut Declared,
) -> Result<(), String> {
    // "MetricDirectives MUST contain the following members: Namespace, Dimensions, Metrics".
    only_members(
        directive,
        &["Namespace", "Dimensions", "Metrics"],
        "a MetricDirective",
    )?;
    let namespace = name(
        directive.get("Namespace").ok_or("no Namespace")?,
        "Namespace",
    )?;
    // CloudWatch: namespaces beginning with "AWS/" are reserved; the pattern is [^:].*;
    // ASCII without control characters.
    if namespace.starts_with("AWS/")
        || namespace.starts_with(':')
        || !namespace
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_control())
    {
        return Err(format!(
            "Namespace {namespace:?} is not one CloudWatch accepts"
        ));
    }
    let sets = directive
        .get("Dimensions")
        .and_then(Value::as_array)
        .ok_or("Dimensions is not an array")?;
    // The schema: Dimensions has at least one DimensionSet.
    if sets.is_empty() {
        return Err("Dimensions is empty".into());
    }
    let mut dimension_sets = Vec::new();
    for set in sets {
        let set = set.as_array().ok_or("a DimensionSet is not an array")?;
        if set.len() > MAX_DIMENSIONS {
            return Err(format!("a DimensionSet has {} keys", set.len()));
        }
        let mut keys = Vec::new();
        for key in set {
            let key = name(key, "a dimension reference")?;
            // "The values within this array MUST also be members on the root-node"; "The
            // target member MUST have a string value"; CloudWatch's Dimension value: 1 to
            // 1024 ASCII characters, not only whitespace, no control characters.
            let value = root
                .get(key)
                .ok_or_else(|| format!("dimension {key} is not a member of the root"))?
                .as_str()
                .ok_or_else(|| format!("dimension {key} is not a string"))?;
            if value.is_empty()
                || value.len() > 1024
                || value.trim().is_empty()
                || !value.bytes().all(|b| b.is_ascii() && !b.is_ascii_control())
            {
                return Err(format!("dimension {key} has the value {value:?}"));
            }
            keys.push(key.to_owned());
        }
        dimension_sets.push(keys);
    }
    let metrics = directive
        .get("Metrics")
        .and_then(Value::as_array)
        .ok_or("Metrics is not an array")?;
    if metrics.len() > MAX_METRICS {
        return Err(format!("{} metrics in one directive", metrics.len()));
    }
    let mut names = BTreeSet::new();
    for metric in metrics {
        let metric = object(Some(metric), "a MetricDefinition")?;
        only_members(
            metric,
            &["Name", "Unit", "StorageResolution"],
            "a MetricDefinition",
        )?;
        // "Name — A string Reference value to a metric Target member."
        let metric_name = name(metric.get("Name").ok_or("a metric has no Name")?, "Name")?;
        if !names.insert(metric_name) {
            return Err(format!("metric {metric_name} is defined twice"));
        }
        // "Unit — ... Values SHOULD be valid CloudWatch metric units"; NONE when absent.
        let unit = match metric.get("Unit") {
            None => "None",
            Some(unit) => unit.as_str().ok_or("a Unit is not a string")?,
        };
        if !UNITS.contains(&unit) {
            return Err(format!("metric {metric_name} has the unit {unit:?}"));
        }
        // StorageResolution: 1 (high resolution) or 60.
        if let Some(resolution) = metric.get("StorageResolution")
            && resolution != 1
            && resolution != 60
        {
            return Err(format!(
                "metric {metric_name}: StorageResolution {resolution}"
            ));
        }
        check_target(root, metric_name)?;
        declared
            .metrics
            .push((metric_name.to_owned(), unit.to_owned()));
    }
    declared.namespaces.push(namespace.to_owned());
    declared.dimensions.push(dimension_sets);
    Ok(())
}

/// "The root node MUST contain all Target members defined by the references"; "Target values
/// cannot be nested"; "A metric target MUST be a numeric value or an array of numeric values",
/// of at most 100 members; or the `{"Values":[..],"Counts":[..]}` form of a distribution, as
/// PutMetricData's `Values` and `Counts`: the same number of each. CloudWatch takes values
/// within ±2^360 and no NaN or infinity (JSON has neither).
fn check_target(root: &Map<String, Value>, metric: &str) -> Result<(), String> {
    let target = root
        .get(metric)
        .ok_or_else(|| format!("metric {metric} is not a member of the root"))?;
    let in_range = |value: &Value| {
        value
            .as_f64()
            .is_some_and(|number| number.is_finite() && number.abs() < 2f64.powi(360))
    };
    let numbers = |values: &Value, what: &str| -> Result<usize, String> {
        let values = values
            .as_array()
            .ok_or_else(|| format!("metric {metric}: {what} is not an array"))?;
        if values.len() > MAX_VALUES {
            return Err(format!("metric {metric}: {} {what}", values.len()));
        }
        if !values.iter().all(in_range) {
            return Err(format!("metric {metric}: {what} are not all numbers"));
        }
        Ok(values.len())
    };
    match target {
        Value::Number(_) if in_range(target) => Ok(()),
        Value::Array(_) => numbers(target, "values").map(|_| ()),
        Value::Object(distribution) => {
            only_members(distribution, &["Values", "Counts"], metric)?;
            let values = numbers(distribution.get("Values").ok_or("no Values")?, "Values")?;
            let counts = numbers(distribution.get("Counts").ok_or("no Counts")?, "Counts")?;
            if values != counts || values == 0 {
                return Err(format!("metric {metric}: {values} values, {counts} counts"));
            }
            Ok(())
        }
        _ => Err(format!("metric {metric} is {target}, not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own example, with the timestamp moved to now.
    fn example() -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        serde_json::json!({
            "_aws": {
                "Timestamp": now,
                "CloudWatchMetrics": [{
                    "Namespace": "lambda-function-metrics",
                    "Dimensions": [["functionVersion"]],
                    "Metrics": [{"Name": "time", "Unit": "Milliseconds"}]
                }]
            },
            "functionVersion": "$LATEST",
            "time": 100,
            "requestId": "989ffbf8-9ace-4817-a57c-e4dd734019ee"
        })
    }

    /// A change that breaks one rule.
    type Change = Box<dyn FnOnce(&mut Value)>;

    fn directive(line: &mut Value) -> &mut Value {
        &mut line["_aws"]["CloudWatchMetrics"][0]
    }

    fn broken(change: impl FnOnce(&mut Value)) -> Result<Declared, String> {
        let mut line = example();
        change(&mut line);
        validate(&line.to_string())
    }

    #[test]
    fn the_specs_example_is_valid() {
        let declared = validate(&example().to_string()).unwrap();
        assert_eq!(
            declared.metrics,
            [("time".to_owned(), "Milliseconds".to_owned())]
        );
    }

    #[test]
    fn each_rule_refuses_a_line_that_breaks_it() {
        let cases: Vec<(&str, Change)> = vec![
            (
                "no _aws",
                Box::new(|l| {
                    l.as_object_mut().unwrap().remove("_aws");
                }),
            ),
            (
                "timestamp in seconds",
                Box::new(|l| l["_aws"]["Timestamp"] = 1_574_109_732.into()),
            ),
            (
                "no namespace",
                Box::new(|l| {
                    directive(l).as_object_mut().unwrap().remove("Namespace");
                }),
            ),
            (
                "AWS namespace",
                Box::new(|l| directive(l)["Namespace"] = "AWS/EC2".into()),
            ),
            (
                "extra member",
                Box::new(|l| directive(l)["Extra"] = 1.into()),
            ),
            (
                "no dimension set",
                Box::new(|l| directive(l)["Dimensions"] = serde_json::json!([])),
            ),
            (
                "missing dimension",
                Box::new(|l| {
                    l.as_object_mut().unwrap().remove("functionVersion");
                }),
            ),
            (
                "numeric dimension",
                Box::new(|l| l["functionVersion"] = 1.into()),
            ),
            (
                "missing target",
                Box::new(|l| {
                    l.as_object_mut().unwrap().remove("time");
                }),
            ),
            ("string target", Box::new(|l| l["time"] = "100".into())),
            (
                "nested target",
                Box::new(|l| l["time"] = serde_json::json!({"value": 1})),
            ),
            (
                "bad unit",
                Box::new(|l| directive(l)["Metrics"][0]["Unit"] = "ms".into()),
            ),
            (
                "101 values",
                Box::new(|l| l["time"] = serde_json::json!(vec![1; 101])),
            ),
            (
                "uneven counts",
                Box::new(|l| l["time"] = serde_json::json!({"Values": [1, 2], "Counts": [1]})),
            ),
            (
                "101 metrics",
                Box::new(|l| {
                    let many: Vec<Value> = (0..101)
                        .map(|i| serde_json::json!({"Name": format!("m{i}")}))
                        .collect();
                    for i in 0..101 {
                        l[format!("m{i}")] = 1.into();
                    }
                    directive(l)["Metrics"] = many.into();
                }),
            ),
            (
                "31 dimensions",
                Box::new(|l| {
                    let keys: Vec<String> = (0..31).map(|i| format!("d{i}")).collect();
                    for key in &keys {
                        l[key] = "x".into();
                    }
                    directive(l)["Dimensions"] = serde_json::json!([keys]);
                }),
            ),
        ];
        for (rule, change) in cases {
            assert!(broken(change).is_err(), "{rule} was accepted");
        }
        assert!(validate("{\"_aws\":{}} trailing").is_err());
    }
}
