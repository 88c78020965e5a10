//! `prepare --shard I/N` and `prepare --merge`: one dataset prepared as N independent parts (the
//! tasks of a batch scheduler's array job), then joined.
//!
//! Part I holds the source items at positions I, I + N, I + 2N... of the source order (which
//! does not depend on the machine), cut exactly as one run would cut them, in its own journal,
//! plus `prepare-part.json` naming the part. The merge checks that the N parts were made with
//! the same options from the same source, that each is complete and appears once, then copies
//! the crops and journals into one directory and assembles the dataset there (splits, label
//! flips and manifest need every item, so they are made only then): the result is the dataset
//! one `prepare` would write.

use super::{
    assemble, cut_faces, read_journal, read_source, Entry, JournalHeader, PrepareOptions, Report,
    Runtime, JOURNAL_FILE,
};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const PART_FILE: &str = "prepare-part.json";

/// Which part of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 0-based.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Part {
    type Err = anyhow::Error;

    /// `I/N`, 0 <= I < N.
    fn from_str(s: &str) -> Result<Self> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard takes I/N (part I of N, from 0), not {s:?}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("--shard {s:?}: {v:?} is not a whole number"))
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 || index >= count {
            bail!("--shard {s:?}: I must be below N (parts are numbered 0 to N-1)");
        }
        Ok(Part { index, count })
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `prepare-part.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRecord {
    pub part: Part,
    /// Source items in this part, and in the whole source.
    pub items: usize,
    pub source_items: usize,
}

impl Part {
    fn holds(self, position: usize) -> bool {
        position % self.count == self.index
    }
}

/// Cuts the faces of part `part` of the source into `out` (resumable like `prepare`).
pub fn prepare_part(
    opts: &PrepareOptions,
    rt: &Runtime,
    out: &Path,
    part: Part,
) -> Result<PartRecord> {
    let source = read_source(opts)?;
    if let Some(other) = read_record(out)? {
        if other.part != part {
            bail!(
                "{} holds part {} already; use another --out for part {part}",
                out.display(),
                other.part
            );
        }
    }
    cut_faces(opts, rt, out, &source, |k| part.holds(k))?;
    let record = PartRecord {
        part,
        items: (0..source.items.len()).filter(|&k| part.holds(k)).count(),
        source_items: source.items.len(),
    };
    crate::util::write_atomic(
        &out.join(PART_FILE),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    Ok(record)
}

fn read_record(dir: &Path) -> Result<Option<PartRecord>> {
    let path = dir.join(PART_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is corrupt", path.display()))
}

/// Joins the parts into `out`: every part present once, complete, made with these options;
/// then the dataset is assembled as one `prepare` would.
pub fn merge(opts: &PrepareOptions, out: &Path, parts: &[PathBuf]) -> Result<Report> {
    let source = read_source(opts)?;
    let mut by_index: HashMap<usize, &PathBuf> = HashMap::new();
    let mut count = None;
    for dir in parts {
        let record = read_record(dir)?.with_context(|| {
            format!(
                "{} is not a part: it has no {PART_FILE} (made by prepare --shard I/N)",
                dir.display()
            )
        })?;
        let n = *count.get_or_insert(record.part.count);
        if record.part.count != n {
            bail!(
                "{} is part {} but another part says there are {n} parts",
                dir.display(),
                record.part
            );
        }
        if record.source_items != source.items.len() {
            bail!(
                "{} was cut from a source of {} images; {} now has {}: the source changed, \
                 prepare the parts again",
                dir.display(),
                record.source_items,
                opts.root.display(),
                source.items.len()
            );
        }
        if let Some(first) = by_index.insert(record.part.index, dir) {
            bail!(
                "part {} is given twice: {} and {}",
                record.part,
                first.display(),
                dir.display()
            );
        }
    }
    let n = count.context("--merge needs the part directories")?;
    let missing: Vec<String> = (0..n)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!("part(s) {} missing from --merge", missing.join(", "));
    }

    let mut done: HashMap<String, Entry> = HashMap::new();
    std::fs::create_dir_all(out.join("images"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    for index in 0..n {
        let dir = by_index[&index];
        let part = Part { index, count: n };
        // Checks that the part was made with these options.
        let entries = read_journal(&dir.join(JOURNAL_FILE), opts)?;
        let mut lacking = 0;
        for (k, item) in source.items.iter().enumerate() {
            if !part.holds(k) {
                if entries.contains_key(&item.key) {
                    bail!(
                        "{} (part {part}) holds {}, which belongs to another part",
                        dir.display(),
                        item.source
                    );
                }
                continue;
            }
            match entries.get(&item.key) {
                None => lacking += 1,
                Some(e) => {
                    for row in &e.rows {
                        copy_crop(&dir.join(&row.path), &out.join(&row.path))?;
                    }
                    done.insert(item.key.clone(), e.clone());
                }
            }
        }
        if lacking > 0 {
            bail!(
                "part {part} ({}) is incomplete: {lacking} of its images are not done; run its \
                 prepare --shard {part} again to finish it",
                dir.display()
            );
        }
    }
    write_journal(opts, out, &source.items, &done)?;
    let resumed = done.len();
    assemble(opts, out, &source, done, resumed)
}

/// A hard link when the part is on the same file system, else a copy.
fn copy_crop(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if to.exists() {
        std::fs::remove_file(to).with_context(|| format!("cannot replace {}", to.display()))?;
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The merged journal, in source order: `out` is then what one resumable `prepare` run wrote.
fn write_journal(
    opts: &PrepareOptions,
    out: &Path,
    items: &[super::Item],
    done: &HashMap<String, Entry>,
) -> Result<()> {
    let mut text = serde_json::to_vec(&JournalHeader {
        prepare: opts.clone(),
    })?;
    text.push(b'\n');
    for item in items {
        serde_json::to_writer(&mut text, &done[&item.key])?;
        text.write_all(b"\n")?;
    }
    crate::util::write_atomic(&out.join(JOURNAL_FILE), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names() {
        assert_eq!("2/5".parse::<Part>().unwrap(), Part { index: 2, count: 5 });
        for bad in ["5/5", "1", "a/2", "0/0", "-1/3"] {
            assert!(bad.parse::<Part>().is_err(), "{bad} was accepted");
        }
        let p = Part { index: 1, count: 3 };
        let held: Vec<usize> = (0..8).filter(|&k| p.holds(k)).collect();
        assert_eq!(held, vec![1, 4, 7]);
    }
}
