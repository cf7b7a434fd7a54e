//! Sessions and connections of one worker, addressed by (id, generation): an id is reused after
//! its entry is freed, and the generation (carried in every io_uring user_data) tells a late
//! completion for the old occupant from one for the new. Entries are boxed so their addresses
//! (message headers, iovecs the kernel reads) stay put while the vector grows.

pub struct Slab<T> {
    entries: Vec<Option<Box<T>>>,
    generations: Vec<u16>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), generations: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    /// Stores `make(generation)` and returns its (id, generation).
    pub fn insert(&mut self, make: impl FnOnce(u16) -> Box<T>) -> (u32, u16) {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                // The configuration check (token::ID_MAX per service, half the id space) keeps
                // live entries far below this; only lingering ones could go past it.
                assert!(self.entries.len() < super::token::ID_SPACE as usize, "slab full: more entries than a token's id can name");
                self.entries.push(None);
                self.generations.push(0);
                (self.entries.len() - 1) as u32
            }
        };
        let g = self.generations[id as usize];
        self.entries[id as usize] = Some(make(g));
        (id, g)
    }

    /// The entry at `id` if it is still the one of `generation`.
    pub fn get_mut(&mut self, id: u32, generation: u16) -> Option<&mut T> {
        if *self.generations.get(id as usize)? != generation {
            return None;
        }
        self.entries[id as usize].as_deref_mut()
    }

    /// The entry at `id`, whatever its generation.
    pub fn at(&mut self, id: u32) -> Option<&mut T> {
        self.entries.get_mut(id as usize)?.as_deref_mut()
    }

    /// Frees `id`; its generation moves on, so stale completions no longer find it.
    pub fn remove(&mut self, id: u32) {
        self.entries[id as usize] = None;
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        self.free.push(id);
    }

    /// Entries still stored (live or waiting for the kernel to let go of them).
    pub fn stored(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Ids of stored entries for which `keep` holds.
    pub fn ids_where(&self, keep: impl Fn(&T) -> bool) -> Vec<u32> {
        (0..self.entries.len() as u32).filter(|&i| self.entries[i as usize].as_deref().is_some_and(&keep)).collect()
    }

    pub fn capacity_ids(&self) -> u32 {
        self.entries.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_tell_old_from_new() {
        let mut s: Slab<&str> = Slab::default();
        let (a, ga) = s.insert(|_| Box::new("a"));
        s.remove(a);
        let (b, gb) = s.insert(|_| Box::new("b"));
        assert_eq!(a, b, "the id is reused");
        assert_ne!(ga, gb);
        assert!(s.get_mut(a, ga).is_none(), "a late completion for the old entry finds nothing");
        assert_eq!(s.get_mut(b, gb).map(|v| *v), Some("b"));
        assert_eq!(s.stored(), 1);
        assert_eq!(s.ids_where(|v| *v == "b"), vec![b]);
    }
}
