//! `attribd gen` (and `attribd bench`'s input): the generator's two streams written as NDJSON
//! files, plain or compressed. A pipeline with `source.kind = "generator"` does not use this;
//! it takes the lines straight from [`super::generate_paced`].

use std::io::Write;

use crate::event::Stream;

use super::{GeneratedCounts, GeneratorConfig, generate};

/// Writes the generator's output as `OUT/clicks.ndjson[.gz|.zst]` and
/// `OUT/conversions.ndjson[…]` (`compress`: none, gz, zst); `attribd gen` and `attribd bench`.
pub fn write_files(
    g: &GeneratorConfig,
    out: &std::path::Path,
    compress: &str,
) -> anyhow::Result<GeneratedCounts> {
    use anyhow::Context;
    use std::fs::File;
    use std::io::BufWriter;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ext = match compress {
        "none" => "",
        "gz" => ".gz",
        "zst" => ".zst",
        other => anyhow::bail!("--compress must be none, gz or zst, got {other:?}"),
    };
    let open = |name: &str| -> anyhow::Result<Box<dyn Write>> {
        let path = out.join(format!("{name}.ndjson{ext}"));
        let f = BufWriter::with_capacity(
            1 << 20,
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        Ok(match compress {
            "gz" => Box::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            )),
            "zst" => Box::new(zstd::stream::write::Encoder::new(f, 3)?.auto_finish()),
            _ => Box::new(f),
        })
    };
    let mut clicks = open("clicks")?;
    let mut convs = open("conversions")?;
    let mut err = None;
    let counts = generate(g, |stream, line| {
        let w = match stream {
            Stream::Clicks => &mut clicks,
            Stream::Conversions => &mut convs,
        };
        match w.write_all(line).and_then(|_| w.write_all(b"\n")) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e).context("writing generated files");
    }
    clicks.flush()?;
    convs.flush()?;
    drop(clicks);
    drop(convs);
    Ok(counts)
}
