//! Unit tests of pipeline parsing and validation.

use super::*;

#[test]
fn embedded_default_is_valid() {
    let cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
    assert_eq!(cfg.source.kind, SourceKind::Generator);
    assert_eq!(
        cfg.semantics.attribution_window,
        Duration::from_secs(30 * 86_400)
    );
}

#[test]
fn problems_name_the_key() {
    let text = "[source]\nkind = \"generator\"\n[source.generator]\nconversion_rate = 1.5\n[semantics]\ndedup_window = \"1d\"\n";
    let err = PipelineConfig::parse(text, "p.toml").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "p.toml: key `source.generator.conversion_rate`: must be between 0 and 1, got 1.5"
        ),
        "{msg}"
    );
    assert!(msg.contains("key `semantics.dedup_window`"), "{msg}");
    assert_eq!(err.problems.len(), 2);
}

#[test]
fn unknown_keys_and_bad_types_are_errors() {
    let err = PipelineConfig::parse("[source]\nkind = \"files\"\nclickz = \"x\"\n", "p.toml")
        .unwrap_err();
    assert_eq!(err.problems[0].key, "source.clickz");
    assert!(err.problems[0].problem.contains("unknown field"), "{err}");
    let err = PipelineConfig::parse(
        "[source]\nkind = \"files\"\nclicks = \"x\"\n[semantics]\nallowed_lateness = \"soon\"\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(err.problems[0].key, "semantics.allowed_lateness");
    let err = PipelineConfig::parse("[source]\nkind = \"files\"\n", "p.toml").unwrap_err();
    assert_eq!(err.problems[0].key, "source.clicks");
}

fn keys(text: &str) -> Vec<String> {
    match PipelineConfig::parse(text, "p.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| p.key).collect(),
    }
}

#[test]
fn every_shipped_pipeline_is_valid() {
    for name in ["default", "files", "fluvio-clickhouse", "http", "edge"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.toml"));
        if let Err(e) = PipelineConfig::load(&path) {
            panic!("{e}");
        }
    }
}

/// `1000000000y` parses as a duration but overflows every time computed from it: each
/// duration key refuses more than a century, naming itself.
#[test]
fn durations_beyond_a_century_are_refused() {
    let base = "[source]\nkind = \"generator\"\n";
    for (table, key) in [
        ("semantics", "attribution_window"),
        ("semantics", "allowed_lateness"),
        ("semantics", "dedup_window"),
        ("limits", "max_future"),
        ("checkpoint", "every"),
        ("sink.parquet", "roll_age"),
        ("source.fluvio", "exit_when_idle"),
        ("source.fluvio", "connect_timeout"),
        ("sink.clickhouse", "retry_initial"),
        ("sink.clickhouse", "retry_max"),
        ("sink.clickhouse", "breaker_cooldown"),
        ("sink.clickhouse", "request_timeout"),
    ] {
        let kind = if table == "source.fluvio" {
            "[source]\nkind = \"fluvio\"\n"
        } else {
            base
        };
        let ch = if table == "sink.clickhouse" {
            "url = \"http://127.0.0.1:8123\"\n"
        } else {
            ""
        };
        // Keys bounded by another: dedup_window ≥ attribution_window, retry_max ≥
        // retry_initial.
        let other = match key {
            "attribution_window" => "dedup_window = \"100y\"\n",
            "retry_initial" => "retry_max = \"100y\"\n",
            _ => "",
        };
        let text = |v: &str| format!("{kind}[{table}]\n{ch}{other}{key} = \"{v}\"\n");
        let err = PipelineConfig::parse(&text("1000000000y"), "p.toml").unwrap_err();
        let msg = err.to_string();
        let want = format!("p.toml: key `{table}.{key}`: must be at most 100 years, got ");
        assert!(msg.contains(&want), "{msg}");
        // (Past its bounding key, it is also said to be so.)
        if !["attribution_window", "retry_initial"].contains(&key) {
            assert_eq!(err.problems.len(), 1, "{msg}");
        }
        assert!(keys(&text("101y")).contains(&format!("{table}.{key}")));
        assert_eq!(keys(&text("100y")), Vec::<String>::new(), "{table}.{key}");
    }
    // The generator's durations, numbers of hours, seconds and minutes.
    let generator = |knob: &str| {
        keys(&format!(
            "[source]\nkind = \"generator\"\n[source.generator]\n{knob}\n"
        ))
    };
    assert_eq!(
        generator("span_hours = 1e12"),
        ["source.generator.span_hours"]
    );
    assert_eq!(
        generator("max_delay_seconds = 9223372036854775807"),
        ["source.generator.max_delay_seconds"]
    );
    for bad in ["1e15", "-1.0", "nan"] {
        assert_eq!(
            generator(&format!("mean_conversion_delay_minutes = {bad}")),
            ["source.generator.mean_conversion_delay_minutes"]
        );
    }
    assert!(generator("span_hours = 876600.0\nmax_delay_seconds = 3155760000").is_empty());
}

#[test]
fn max_json_depth_defaults_to_128_and_is_bounded() {
    let cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
    assert_eq!(cfg.decode_limits().max_json_depth, 128);
    let limits = |line: &str| {
        let text = format!("[source]\nkind = \"generator\"\n[limits]\n{line}\n");
        (
            keys(&text),
            PipelineConfig::parse(&text, "p.toml").map(|c| c.decode_limits()),
        )
    };
    assert_eq!(limits("max_json_depth = 7").1.unwrap().max_json_depth, 7);
    assert_eq!(limits("max_json_depth = 0").0, ["limits.max_json_depth"]);
    assert_eq!(
        limits("max_json_depth = 10001").0,
        ["limits.max_json_depth"]
    );
    assert!(limits("max_json_depth = 10000").0.is_empty());
    // A line is held in memory up to max_record_bytes: at most 1 GiB.
    assert_eq!(
        limits("max_record_bytes = 1073741825").0,
        ["limits.max_record_bytes"]
    );
    assert!(limits("max_record_bytes = 1073741824").0.is_empty());
}

/// A source table or key that `source.kind` does not use is an error, even when empty or
/// equal to the defaults; the command line may still switch the kind.
#[test]
fn source_tables_the_kind_does_not_use_are_errors() {
    let err = PipelineConfig::parse(
        "[source]\nkind = \"files\"\nclicks = \"c.ndjson\"\n[source.fluvio]\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.toml: key `source.fluvio`: is for kind = \"fluvio\", not used by kind = \"files\"; remove it or change source.kind"
    );
    let gen_defaults = "[source.generator]\nseed = 42\n";
    assert_eq!(
        keys(&format!(
            "[source]\nkind = \"files\"\nclicks = \"c\"\n{gen_defaults}"
        )),
        ["source.generator"]
    );
    assert_eq!(
        keys("[source]\nkind = \"fluvio\"\nclicks = \"c\"\nconversions = \"v\"\n"),
        ["source.clicks", "source.conversions"]
    );
    assert_eq!(
        keys("[source]\nkind = \"generator\"\nconversions = \"v\"\nfluvio = {}\n"),
        ["source.conversions", "source.fluvio"]
    );
    assert_eq!(
        keys("source = { kind = \"fluvio\", generator = { seed = 1 } }\n"),
        ["source.generator"]
    );
    // Each kind with its own table is fine; `--clicks` switches a generator pipeline to
    // files without complaint.
    assert!(keys("[source]\nkind = \"generator\"\n[source.generator]\n").is_empty());
    assert!(keys("[source]\nkind = \"fluvio\"\n[source.fluvio]\n").is_empty());
    let mut cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
    cfg.apply_overrides(Overrides {
        clicks: Some("c.ndjson".into()),
        ..Overrides::default()
    })
    .unwrap();
}

#[test]
fn a_missing_source_kind_is_named_source_kind() {
    for text in [
        "[source]\nclicks = \"x\"\n",
        "name = \"x\"\n",
        "",
        "source = {}\n",
        "[semantics]\n[ source ]\n[sink.parquet]\nout = \"y\"\n",
    ] {
        let err = PipelineConfig::parse(text, "p.toml").unwrap_err();
        assert_eq!(err.problems[0].key, "source.kind", "{text:?}: {err}");
    }
    let err = PipelineConfig::parse("[source]\n", "p.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.toml: key `source.kind`: missing field `kind`"
    );
}

#[test]
fn fluvio_flags_on_another_source_are_errors_not_ignored() {
    let default = || PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
    let err = default()
        .apply_overrides(Overrides {
            exit_when_idle: Some(std::time::Duration::from_secs(5)),
            fluvio_consumer: Some("c".into()),
            ..Overrides::default()
        })
        .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(
        err.problems[0]
            .problem
            .starts_with("--fluvio-consumer applies to a Fluvio source only")
            && err.problems[1].problem.contains("--exit-when-idle")
            && err.problems[1].problem.contains("reads the generator"),
        "{err}"
    );
    let err = default()
        .apply_overrides(Overrides {
            clicks: Some("c.ndjson".into()),
            fluvio_partitions: Some(vec![0]),
            ..Overrides::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("reads files"), "{err}");
    // With a Fluvio source they are what they say.
    let mut cfg = default();
    cfg.apply_overrides(Overrides {
        fluvio_endpoint: Some("127.0.0.1:9003".into()),
        exit_when_idle: Some(std::time::Duration::from_secs(5)),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(
        cfg.source.fluvio.exit_when_idle,
        Some(std::time::Duration::from_secs(5))
    );
}

#[test]
fn live_mode_knobs_need_a_rate() {
    let generator = |knobs: &str| {
        PipelineConfig::parse(
            &format!("[source]\nkind = \"generator\"\n[source.generator]\n{knobs}\n"),
            "p.toml",
        )
    };
    let err = generator("unbounded = true\nbacklog_clicks = 1000").unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.problems.len(), 2, "{msg}");
    assert!(
        msg.contains("key `source.generator.backlog_clicks`: needs `rate`"),
        "{msg}"
    );
    assert!(msg.contains("key `source.generator.unbounded`"), "{msg}");
    let cfg = generator("rate = 100.0\nunbounded = true\nbacklog_clicks = 1000").unwrap();
    assert_eq!(cfg.source.generator.backlog_clicks, 1000);
    // The backlog changes when records leave, not what they are: a restart may change it (and
    // a checkpoint taken before the knob existed still matches).
    let without = generator("rate = 100.0\nunbounded = true").unwrap();
    let settings = crate::checkpoint::identity::semantic_settings;
    assert_eq!(settings(&cfg), settings(&without));
}

/// The HTTP door: beyond loopback only with keys; TLS needs both its files. A Fluvio
/// pipeline may carry the edge's [source.http] (for `attribd ingest`), checked all the same.
#[test]
fn an_http_source_is_refused_open_to_the_network_without_keys_and_with_half_a_tls_setting() {
    let base = "[source]\nkind = \"http\"\n[source.http]\n";
    let problems = |extra: &str| -> String {
        match PipelineConfig::parse(&format!("{base}{extra}"), "p.toml") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(problems("listen = \"127.0.0.1:8088\""), "");
    let open = problems("listen = \"0.0.0.0:8088\"");
    assert!(open.contains("source.http.keys_file"), "{open}");
    assert_eq!(
        problems("listen = \"0.0.0.0:8088\"\nkeys_file = \"k.toml\""),
        ""
    );
    assert_eq!(problems("tls_cert = \"c.pem\"\ntls_key = \"k.pem\""), "");
    let half = problems("tls_cert = \"c.pem\"");
    assert!(
        half.contains("source.http.tls_key") && half.contains("needs both"),
        "{half}"
    );
    let edge = |extra: &str| {
        PipelineConfig::parse(
            &format!("[source]\nkind = \"fluvio\"\n[source.http]\n{extra}"),
            "p.toml",
        )
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
    };
    assert_eq!(edge("listen = \"127.0.0.1:8089\""), "");
    assert!(edge("listen = \"0.0.0.0:8089\"").contains("source.http.keys_file"));
    let bad = problems("listen = \"here\"");
    assert!(bad.contains("source.http.listen"), "{bad}");
}

/// `with_http` opens the door beside Fluvio only, and not with a run that ends when idle.
#[test]
fn with_http_is_for_a_fluvio_run_that_does_not_end_by_itself() {
    let problems = |text: &str| keys(text);
    assert!(problems("[source]\nkind = \"fluvio\"\nwith_http = true\n").is_empty());
    assert_eq!(
        problems("[source]\nkind = \"generator\"\nwith_http = true\n"),
        vec!["source.with_http"]
    );
    assert_eq!(
        problems("[source]\nkind = \"http\"\nwith_http = true\n"),
        vec!["source.with_http"]
    );
    assert_eq!(
        problems(
            "[source]\nkind = \"fluvio\"\nwith_http = true\n[source.fluvio]\nexit_when_idle = \"3s\"\n"
        ),
        vec!["source.fluvio.exit_when_idle"]
    );
}

#[test]
fn the_default_pipeline_values_money_and_flags_fraud() {
    let cfg = PipelineConfig::parse(DEFAULT_PIPELINE, "default").unwrap();
    let money = cfg
        .money_applied
        .expect("[money] is loaded with the pipeline");
    assert_eq!(money.fx.reporting(), "USD");
    assert_eq!((money.fx.len(), money.payouts.len()), (5, 5));
    assert!(money.payouts.pays_clicks());
    assert_eq!(cfg.fraud.max_clicks_per_ip_per_minute, 20);
    assert!(cfg.source.generator.ip_burst_rate > 0.0);
    // An inline rule with a problem is named by its place.
    let text = DEFAULT_PIPELINE.replace(
        r#"{ offer = "o2", revshare_percent = 25 }"#,
        r#"{ offer = "o2", revshare_percent = 250 }"#,
    );
    let err = PipelineConfig::parse(&text, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `payouts`: [[payouts.rule]] 3: `revshare_percent` is above 100"),
        "{err}"
    );
}
