//! Pure checks that a file's bytes are a whole ELF shared library for this machine that exports
//! a cages entry symbol. Nothing here maps or runs the library.

use super::LoadError;
use cage_sdk::abi::{ENTRY_SYMBOL, ENTRY_SYMBOL_PREFIX};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSymbol};

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: u16 = elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: u16 = elf::EM_AARCH64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("cages supports x86_64 and aarch64 hosts");

/// The first bytes of every ELF file.
pub const MAGIC: [u8; 4] = *b"\x7fELF";

/// Checks that a file's first bytes (at least [`MAGIC`]'s length of them, if it has that
/// many) open an ELF file, so that nothing more of a file that is not one needs reading.
pub fn check_magic(first: &[u8]) -> Result<(), LoadError> {
    if first.is_empty() {
        Err(LoadError::NotElf(
            "no ELF magic at start of file (the file is empty)".into(),
        ))
    } else if !first.starts_with(&MAGIC) {
        Err(LoadError::NotElf("no ELF magic at start of file".into()))
    } else {
        Ok(())
    }
}

/// Checks that `data` is a complete 64-bit ELF shared object for this machine whose dynamic
/// symbols include this ABI's entry symbol.
pub fn check(data: &[u8]) -> Result<(), LoadError> {
    let len = data.len() as u64;
    check_magic(data)?;
    let header = elf::FileHeader64::<Endianness>::parse(data)
        .map_err(|e| LoadError::NotElf(format!("{e} (only 64-bit ELF is supported)")))?;
    let endian = header
        .endian()
        .map_err(|e| LoadError::NotElf(e.to_string()))?;

    if header.e_type(endian) != elf::ET_DYN {
        return Err(LoadError::NotElf(format!(
            "ELF type {} is not a shared object (build the module with crate-type = [\"cdylib\"])",
            header.e_type(endian)
        )));
    }
    let machine = header.e_machine(endian);
    if machine != HOST_MACHINE {
        return Err(LoadError::WrongMachine {
            found: machine,
            expected: HOST_MACHINE,
        });
    }

    let within = |what: String, offset: u64, size: u64| -> Result<(), LoadError> {
        let end = offset.saturating_add(size);
        if end > len {
            Err(LoadError::Truncated { what, end, len })
        } else {
            Ok(())
        }
    };

    let phoff = header.e_phoff(endian);
    let phsize = u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    within("program header table".into(), phoff, phsize)?;
    let program_headers = header
        .program_headers(endian, data)
        .map_err(|e| LoadError::NotElf(format!("program headers: {e}")))?;
    if program_headers.is_empty() {
        return Err(LoadError::NotElf("no program headers".into()));
    }
    for (i, ph) in program_headers.iter().enumerate() {
        within(
            format!("segment {i}"),
            ph.p_offset(endian),
            ph.p_filesz(endian),
        )?;
    }

    let shoff = header.e_shoff(endian);
    if shoff == 0 {
        return Err(LoadError::NotElf("no section header table".into()));
    }
    let shsize = u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
    within("section header table".into(), shoff, shsize)?;
    let sections = header
        .section_headers(endian, data)
        .map_err(|e| LoadError::NotElf(format!("section headers: {e}")))?;
    for (i, sh) in sections.iter().enumerate() {
        if sh.sh_type(endian) != elf::SHT_NOBITS {
            within(
                format!("section {i}"),
                sh.sh_offset(endian),
                sh.sh_size(endian),
            )?;
        }
    }

    let file = object::read::elf::ElfFile64::<Endianness>::parse(data)
        .map_err(|e| LoadError::NotElf(e.to_string()))?;
    let mut other_versions = Vec::new();
    for symbol in file.dynamic_symbols() {
        let Ok(name) = symbol.name() else { continue };
        if name == ENTRY_SYMBOL && symbol.is_definition() {
            return Ok(());
        }
        if name.starts_with(ENTRY_SYMBOL_PREFIX) {
            other_versions.push(name.to_owned());
        }
    }
    if other_versions.is_empty() {
        Err(LoadError::MissingEntry {
            expected: ENTRY_SYMBOL,
        })
    } else {
        Err(LoadError::AbiMismatch {
            found: other_versions.join(", "),
            expected: cage_sdk::abi::ABI_VERSION,
            symbol: ENTRY_SYMBOL,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is an ELF file of this machine, though not a shared module.
    fn own_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn magic_is_judged_from_the_first_bytes() {
        assert!(check_magic(b"\x7fELF").is_ok());
        assert!(check_magic(b"\x7fELF\x02\x01").is_ok());
        for bad in [&b"\x7fEL"[..], b"MZ\x90\x00", b"\0\0\0\0", b"#!/b"] {
            let e = check_magic(bad).unwrap_err().to_string();
            assert!(e.contains("no ELF magic at start of file"), "{e}");
        }
        let e = check_magic(b"").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn rejects_garbage_and_empty() {
        assert!(matches!(check(b""), Err(LoadError::NotElf(_))));
        assert!(matches!(
            check(b"#!/bin/sh\necho hi\n"),
            Err(LoadError::NotElf(_))
        ));
        let mut fake = b"\x7fELF".to_vec();
        fake.extend_from_slice(&[0u8; 12]);
        assert!(matches!(check(&fake), Err(LoadError::NotElf(_))));
    }

    #[test]
    fn rejects_every_truncation_of_a_real_elf() {
        let data = own_binary();
        // Cut points across the whole file, including inside the headers.
        for cut in [
            20,
            64,
            100,
            1000,
            data.len() / 3,
            data.len() / 2,
            data.len() - 1,
        ] {
            let r = check(&data[..cut]);
            assert!(
                matches!(r, Err(LoadError::NotElf(_) | LoadError::Truncated { .. })),
                "cut {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn whole_non_module_binary_lacks_entry_or_is_not_shared() {
        let r = check(&own_binary());
        // Test binaries are PIE (ET_DYN) on most toolchains, so the entry symbol is what is missing.
        assert!(
            matches!(
                r,
                Err(LoadError::MissingEntry { .. } | LoadError::NotElf(_))
            ),
            "{r:?}"
        );
    }
}
