//! Minimisation at ingest (`[privacy]`): generated clicks and postbacks through `attribd run`,
//! the Parquet output read back. Addresses are truncated or hashed, user agents and named
//! metadata keys dropped, before anything is written — and unique clicks are counted on the
//! minimised address.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;

/// Runs the generated `input` with `privacy` (the body of a `[privacy]` table) into `out`.
fn run_with(dir: &Path, input: &Path, out: &Path, privacy: &str) {
    let p = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"files\"\nclicks = \"{}\"\nconversions = \"{}\"\n\
             [sink.parquet]\nout = \"{}\"\n[privacy]\n{privacy}\n",
            input.join("clicks.ndjson").display(),
            input.join("conversions.ndjson").display(),
            out.display()
        ),
    )
    .unwrap();
    attribd(&["run", "-q", "-p", p.to_str().unwrap()]);
}

/// The raw `ip` of every click in the input, by click_id.
fn raw_ips(input: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(input.join("clicks.ndjson"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v["click_id"].as_str()?.to_string(),
                v["ip"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Unique clicks must be exactly one per (UTC day, tenant, offer, written ip), plus every
/// click without an ip: counted on what is written, not on what came in.
fn assert_unique_counted_on_written_ip(out: &Path) {
    let clicks = rows(&read_table(out, "clicks"));
    let mut keys = BTreeSet::new();
    let mut without_ip = 0;
    let mut unique = 0;
    for r in &clicks {
        let ip = get(r, "ip");
        if ip.is_empty() || ip == "None" {
            without_ip += 1;
        } else {
            keys.insert(format!(
                "{}/{}/{}/{ip}",
                int(r, "ts").div_euclid(86_400_000),
                get(r, "tenant_id"),
                get(r, "offer_id")
            ));
        }
        unique += usize::from(get(r, "is_unique") == "true");
    }
    assert_eq!(unique, keys.len() + without_ip, "unique clicks");
}

#[test]
fn truncated_addresses_no_user_agents_and_dropped_metadata_keys_in_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(
        dir.path(),
        "clicks = 20000\nseed = 88\nmalformed_rate = 0.0\nrepeat_ip_rate = 0.3",
    );
    // Two visitors of one /24 on the same offer and day: two unique clicks as received, one
    // once truncated.
    let mut clicks = std::fs::read_to_string(input.join("clicks.ndjson")).unwrap();
    for (id, ip) in [("priv-1", "198.51.100.1"), ("priv-2", "198.51.100.2")] {
        clicks.push_str(&format!(
            "{{\"click_id\":\"{id}\",\"ts\":\"2026-11-01T12:00:00Z\",\"tenant_id\":\"t9\",\"offer_id\":\"o-priv\",\"affiliate_id\":\"a1\",\"ip\":\"{ip}\"}}\n"
        ));
    }
    std::fs::write(input.join("clicks.ndjson"), clicks).unwrap();
    let kept = dir.path().join("kept");
    run_with(dir.path(), &input, &kept, "");
    let out = dir.path().join("minimised");
    run_with(
        dir.path(),
        &input,
        &out,
        "ip = \"truncate\"\ndrop_user_agent = true\ndrop_metadata_keys = [\"sent_at\"]",
    );

    let raw = raw_ips(&input);
    let clicks = rows(&read_table(&out, "clicks"));
    assert_eq!(clicks.len(), rows(&read_table(&kept, "clicks")).len());
    for r in &clicks {
        let want = raw[get(r, "click_id")]
            .rsplit_once('.')
            .map(|(net, _)| format!("{net}.0"))
            .unwrap();
        assert_eq!(get(r, "ip"), want, "{r:?}");
        let ua = get(r, "user_agent");
        assert!(ua.is_empty() || ua == "None", "user agent kept: {r:?}");
    }
    // The same addresses kept: the user agents were there, and more visitors were unique.
    assert!(
        rows(&read_table(&kept, "clicks"))
            .iter()
            .any(|r| get(r, "user_agent").starts_with("Mozilla"))
    );
    assert_unique_counted_on_written_ip(&out);
    assert_unique_counted_on_written_ip(&kept);
    let uniques = |o: &Path| {
        rows(&read_table(o, "clicks"))
            .iter()
            .filter(|r| get(r, "is_unique") == "true")
            .count()
    };
    assert!(
        uniques(&out) < uniques(&kept),
        "a /24 holds several visitors"
    );

    let convs = rows(&read_table(&out, "conversions"));
    assert!(!convs.is_empty());
    let mut with_metadata = 0;
    for r in &convs {
        let m = get(r, "metadata");
        assert!(!m.contains("sent_at"), "{r:?}");
        with_metadata += usize::from(m.starts_with('{'));
    }
    let kept_convs = rows(&read_table(&kept, "conversions"));
    assert!(
        kept_convs
            .iter()
            .any(|r| get(r, "metadata").contains("sent_at"))
    );
    assert_eq!(convs.len(), kept_convs.len());
    assert!(with_metadata > 0, "the object stays, without the key");
}

#[test]
fn hashed_addresses_keep_one_value_per_visitor_and_a_bad_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(
        dir.path(),
        "clicks = 5000\nseed = 89\nmalformed_rate = 0.0\nrepeat_ip_rate = 0.3",
    );
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nkind = \"generator\"\n[privacy]\nip = \"hash\"\nip_hash_key_file = \"{}\"\n",
            short.display()
        ),
    )
    .unwrap();
    let o = attribd_cmd()
        .args(["run", "-q", "-p", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("privacy.ip_hash_key_file") && err.contains("at least 16"),
        "{err}"
    );

    let key = dir.path().join("ip.key");
    std::fs::write(&key, b"0123456789abcdef0123456789abcdef").unwrap();
    let out = dir.path().join("hashed");
    run_with(
        dir.path(),
        &input,
        &out,
        &format!("ip = \"hash\"\nip_hash_key_file = \"{}\"", key.display()),
    );
    let raw = raw_ips(&input);
    let mut forward: BTreeMap<String, String> = BTreeMap::new();
    let mut backward: BTreeMap<String, String> = BTreeMap::new();
    for r in rows(&read_table(&out, "clicks")) {
        let (ip, hashed) = (raw[get(&r, "click_id")].clone(), get(&r, "ip").to_string());
        assert!(
            hashed.starts_with("h:") && !hashed.contains(&ip),
            "{hashed}"
        );
        assert_eq!(forward.entry(ip.clone()).or_insert(hashed.clone()), &hashed);
        assert_eq!(backward.entry(hashed).or_insert(ip.clone()), &ip);
    }
    assert!(forward.len() > 100);
    assert_unique_counted_on_written_ip(&out);
}
