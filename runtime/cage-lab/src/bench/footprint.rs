//! How much of the machine a cage takes, as `/proc` and the file system show it from outside:
//! its resident memory, the CPU time of its process and worker processes, and the bytes of
//! its data directory.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes of the files under `dir` (their lengths; a preallocated journal segment counts
/// whole).
pub fn dir_bytes(dir: &Path) -> u64 {
    walk(dir, &|m: &std::fs::Metadata| m.len())
}

/// Bytes the files under `dir` take on disk (allocated blocks: a sparse file counts what it
/// holds, not its length).
pub fn dir_allocated(dir: &Path) -> u64 {
    walk(dir, &|m: &std::fs::Metadata| m.blocks() * 512)
}

fn walk(dir: &Path, size: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk(&e.path(), size),
            Ok(m) => size(&m),
            Err(_) => 0,
        })
        .sum()
}

/// Resident memory of process `pid` (`VmRSS`), if it runs on this machine.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Nanoseconds process `pid` has spent on a CPU so far: the first field of each of its
/// threads' `schedstat`, summed (threads that already exited are not counted).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Process `pid` and every process below it (its worker processes and theirs), from the
/// parent ids in `/proc/*/stat`.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    family
}

/// The parent id of process `pid`: the second field after the command name in
/// `/proc/PID/stat` (the name, in parentheses, may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let family = with_descendants(me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(family[0], me);
        assert!(family.contains(&child.id()), "{family:?}");
        assert!(cpu_ns(me).is_some_and(|ns| ns > 0));
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
    }

    #[test]
    fn a_directory_counts_its_files() {
        let dir = std::env::temp_dir().join(format!("footprint-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), [1u8; 10_000]).unwrap();
        let (len, allocated) = (dir_bytes(&dir), dir_allocated(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(len, 10_000);
        assert!(allocated >= 10_000, "{allocated}");
    }
}
