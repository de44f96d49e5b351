use leakhunt_analyzer::{CoreFile, MemoryImage};
fn main() {
    let a = CoreFile::open(std::path::Path::new(&std::env::args().nth(1).unwrap()), None).unwrap();
    for m in a.mappings() {
        let stored = a.slice(m.start, m.len() as usize).is_some();
        println!("{:x}-{:x} {} {:?} stored={}", m.start, m.end, m.perms, m.path, stored);
    }
}
