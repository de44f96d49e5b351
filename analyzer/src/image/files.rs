//! Files a core names (NT_FILE), used for the read-only pages kernel and gcore cores leave out.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{LittleEndian as LE, Object};

/// A file mapped read-only to stand in for pages missing from a core.
pub(crate) struct FileBacking {
    /// Path as the process saw it.
    pub name: String,
    /// Where it was found (below the sysroot, if one was given).
    pub found_at: PathBuf,
    map: Mmap,
    verified: bool,
}

impl FileBacking {
    /// Open `name` below `sysroot`; refuse it when its build ID differs from `expected`.
    /// The error is a short reason for the "pages missing" note.
    pub fn open(
        name: &str,
        sysroot: Option<&Path>,
        expected: Option<&[u8]>,
    ) -> Result<FileBacking, &'static str> {
        let found_at = match sysroot {
            Some(root) => root.join(name.trim_start_matches('/')),
            None => PathBuf::from(name),
        };
        let file = open_regular(&found_at).ok_or("was not found (or is not a regular file)")?;
        // SAFETY: read-only private mapping of a binary or library; such files are replaced by
        // rename on upgrade, not rewritten in place.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|_| "could not be mapped")?;
        let actual = object::File::parse(&*map)
            .ok()
            .and_then(|f| f.build_id().ok().flatten().map(<[u8]>::to_vec));
        let verified = match (expected, actual.as_deref()) {
            (Some(e), Some(a)) if e != a => {
                return Err("has a different build ID (it was replaced since)")
            }
            (Some(_), Some(_)) => true,
            _ => false,
        };
        Ok(FileBacking {
            name: name.to_owned(),
            found_at,
            map,
            verified,
        })
    }

    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(offset).ok()?;
        self.map.get(off..off.checked_add(len)?)
    }

    /// A note for the user when the substitution could not be checked.
    pub fn note(&self) -> Option<String> {
        // Data files (locale archives, caches) carry no build ID by nature: only unverifiable ELF
        // objects are worth a word, as their code and type names feed the analysis.
        let is_elf = self.map.get(..4) == Some(b"\x7fELF".as_slice());
        (!self.verified && is_elf).then(|| {
            format!(
                "read-only pages of {} taken from {} without a build ID to check them against",
                self.name,
                self.found_at.display()
            )
        })
    }
}

/// Open `path` only if it is a regular file: a core names paths the analyzer then opens, and a
/// FIFO or device there must not block or feed us endless bytes.
pub(crate) fn open_regular(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// The GNU build ID from the first page of a mapped ELF object (header, program headers and,
/// in every common layout, the `.note.gnu.build-id` section all sit in the first page).
pub(crate) fn build_id_from_header_page(page: &[u8]) -> Option<Vec<u8>> {
    let header = elf::FileHeader64::<LE>::parse(page).ok()?;
    let phdrs = header.program_headers(LE, page).ok()?;
    for ph in phdrs {
        if ph.p_type(LE) != elf::PT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = ph.notes(LE, page) else {
            continue;
        };
        while let Ok(Some(n)) = notes.next() {
            if n.name() == b"GNU" && n.n_type(LE) == elf::NT_GNU_BUILD_ID {
                return Some(n.desc().to_vec());
            }
        }
    }
    None
}
