//! Cutting an ordered map into pages, incrementally: what makes a
//! checkpoint cost what changed rather than the size of the state. The
//! key-value store pages its entries with it, and the replica its client
//! table.
//!
//! # The cut
//! The pages are defined by a from-scratch cut ([`cut_all`], the reference
//! the incremental cut must reproduce): whole entries in key order; a page
//! ends after an entry once it holds the [`Layout::target`] size (counting
//! [`Layout::size`] per entry), or a quarter of it at a key the layout
//! allows as a [`Layout::boundary`] (a function of the key alone); an empty
//! map is one page without entries. Every cut resets the size to zero, so
//! what follows a cut depends only on the entries after it.
//!
//! # Incrementally
//! A [`PageCache`] keeps the pages of its last cut: each with the first key
//! of its range (page 0's range begins below every key, the last page's runs
//! to the end) and a dirty flag, which [`PageCache::touch`] sets on the page
//! whose range holds a written key (a binary search over the pages: memory
//! O(pages), whatever the number of writes). The next cut walks the old
//! pages in order:
//! * a clean page is reused as it is (an `Arc` clone, no re-encoding or
//!   re-hashing): every earlier page is the same as before, so the
//!   from-scratch cut reaches its first key with size zero and cuts it the
//!   same way;
//! * at a dirty page the cut restarts, with size zero, from the page's first
//!   key (from the very first key for page 0, which may carry a header), over
//!   the current entries, until a cut lands exactly before the first key of
//!   a later old page: the from-scratch cut is then at that key with size
//!   zero too, so that page is reused if it is clean, or cut again from its
//!   first key if not. A re-cut that reaches the last entry supersedes every
//!   old page left.
//!
//! The result is always the from-scratch cut of the current entries, byte
//! for byte, provided every change to the map since the last cut was
//! touched; the cost is the re-cut pages plus O(pages) bookkeeping.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;
use std::ops::Bound;
use std::vec;

use crate::Page;

/// How the entries of a map of `K` to `V` are cut into pages and encoded.
/// Every method must be a function of its arguments alone (and of the
/// layout's own fixed parameters), so that every replica cuts alike.
pub trait Layout<K, V> {
    /// The size a page aims at (see the module docs).
    fn target(&self) -> usize;
    /// The bytes an entry counts towards its page's size.
    fn size(&self, key: &K, value: &V) -> usize;
    /// Whether a page that holds a quarter of the target may end after
    /// `key`: a function of the key alone, so that boundaries do not move
    /// when unrelated entries change.
    fn boundary(&self, key: &K) -> bool;
    /// The bytes of the page at `index` of the cut, holding `entries`.
    fn encode(&self, index: usize, entries: &[(&K, &V)]) -> Vec<u8>;
}

/// One page of the last cut.
#[derive(Clone)]
struct CachedPage<K> {
    /// The page's first key; `None` for the one page of an empty map. Page
    /// 0's range begins below every key whatever this says.
    first: Option<K>,
    /// The page itself.
    page: Page,
    /// Whether a key in the page's range has been written since the cut.
    dirty: bool,
}

/// The pages of a map's last cut, in order; empty when there is none
/// (never cut, or cleared), so that the next cut starts from scratch.
#[derive(Clone)]
pub struct PageCache<K> {
    pages: Vec<CachedPage<K>>,
}

impl<K> Default for PageCache<K> {
    fn default() -> Self {
        PageCache { pages: Vec::new() }
    }
}

impl<K> fmt::Debug for PageCache<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageCache")
            .field("pages", &self.pages.len())
            .field("dirty", &self.pages.iter().filter(|p| p.dirty).count())
            .finish()
    }
}

impl<K: Ord + Clone> PageCache<K> {
    /// Forgets the pages: the next cut starts from scratch.
    pub fn clear(&mut self) {
        self.pages.clear();
    }

    /// Records a change to the entry under `key` (written, replaced or
    /// removed): marks the page whose range holds it.
    pub fn touch(&mut self, key: &K) {
        if let Some(rest) = self.pages.get(1..) {
            // The last page whose first key is at most `key`; page 0 for keys
            // below page 1's first key.
            let i = rest.partition_point(|p| p.first.as_ref() <= Some(key));
            self.pages[i].dirty = true;
        }
    }

    /// The number of pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no pages are held (the next cut starts from scratch).
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The first key of each page held (`None` for an empty map's page).
    pub fn first_keys(&self) -> impl Iterator<Item = Option<&K>> {
        self.pages.iter().map(|p| p.first.as_ref())
    }

    /// The pages of `map` as `layout` cuts it, cutting again only the pages
    /// touched since the last call (which must have cut the same map with
    /// the same layout); keeps them for the next call.
    pub fn cut<V>(&mut self, map: &BTreeMap<K, V>, layout: &impl Layout<K, V>) -> Vec<Page> {
        let old = std::mem::take(&mut self.pages);
        self.pages = cut(map, layout, old, &mut |_, bytes| Page::new(bytes));
        self.pages.iter().map(|p| p.page.clone()).collect()
    }

    /// Cuts `map` from scratch and keeps the cut, taking each page from
    /// `given` where its bytes are the same (so pages a restore was given are
    /// shared, not hashed again). Pages that were not cut the canonical way
    /// are never kept as they are, so later cuts stay canonical whatever the
    /// map was restored from.
    pub fn seed<V>(&mut self, map: &BTreeMap<K, V>, layout: &impl Layout<K, V>, given: &[Page]) {
        self.pages = cut(
            map,
            layout,
            Vec::new(),
            &mut |i, bytes| match given.get(i) {
                Some(page) if page.bytes() == bytes.as_slice() => page.clone(),
                _ => Page::new(bytes),
            },
        );
    }
}

/// The from-scratch cut: the definition of the pages, which
/// [`PageCache::cut`] must reproduce exactly (kept simple, for tests).
pub fn cut_all<K, V>(map: &BTreeMap<K, V>, layout: &impl Layout<K, V>) -> Vec<Page> {
    let target = layout.target();
    let mut pages = Vec::new();
    let mut page: Vec<(&K, &V)> = Vec::new();
    let mut size = 0;
    for (key, value) in map {
        page.push((key, value));
        size += layout.size(key, value);
        if size >= target || (size >= target / 4 && layout.boundary(key)) {
            pages.push(Page::new(layout.encode(pages.len(), &page)));
            page.clear();
            size = 0;
        }
    }
    if !page.is_empty() || pages.is_empty() {
        pages.push(Page::new(layout.encode(pages.len(), &page)));
    }
    pages
}

/// Turns the bytes of the `index`th page of a cut into a [`Page`].
type MakePage<'a> = dyn FnMut(usize, Vec<u8>) -> Page + 'a;

/// Cuts `map` into pages, reusing the pages of `old` (the cache of an
/// earlier cut of the same map with the same layout, dirty flags set on
/// every page whose range was written since) that are still part of the
/// cut. `make` turns the bytes of each new page into a [`Page`].
fn cut<K: Ord + Clone, V>(
    map: &BTreeMap<K, V>,
    layout: &impl Layout<K, V>,
    old: Vec<CachedPage<K>>,
    make: &mut MakePage<'_>,
) -> Vec<CachedPage<K>> {
    let mut out = Vec::with_capacity(old.len().max(1));
    let mut old = old.into_iter().peekable();
    if old.peek().is_none() {
        // No cache: cut everything.
        recut(map, layout, None, &mut old, &mut out, make);
        return out;
    }
    while let Some(page) = old.next() {
        if !page.dirty {
            out.push(page);
            continue;
        }
        match (out.is_empty(), page.first) {
            // Nothing emitted yet: this is page 0, whose range begins below
            // every key.
            (true, _) => recut(map, layout, None, &mut old, &mut out, make),
            (false, Some(first)) => recut(map, layout, Some(&first), &mut old, &mut out, make),
            // Only an empty map's one page has no first key, and it is page 0.
            (false, None) => {}
        }
    }
    out
}

/// Cuts the entries from `start` on (from the first if `None`), starting a
/// page there with size zero, until a cut lands just before the first key
/// of a page of `old` (left at the front of `old`: the caller reuses it if
/// it is clean, or cuts again from there) or the entries end (`old` is
/// drained: every page left is superseded). Old pages that begin before the
/// cut's position are dropped as it passes them.
fn recut<K: Ord + Clone, V>(
    map: &BTreeMap<K, V>,
    layout: &impl Layout<K, V>,
    start: Option<&K>,
    old: &mut Peekable<vec::IntoIter<CachedPage<K>>>,
    out: &mut Vec<CachedPage<K>>,
    make: &mut MakePage<'_>,
) {
    let target = layout.target();
    let from = start.map_or(Bound::Unbounded, Bound::Included);
    let mut entries = map.range((from, Bound::Unbounded)).peekable();
    let mut page: Vec<(&K, &V)> = Vec::new();
    let mut size = 0;
    while let Some((key, value)) = entries.next() {
        page.push((key, value));
        size += layout.size(key, value);
        if size < target && (size < target / 4 || !layout.boundary(key)) {
            continue;
        }
        emit(layout, &page, out, make);
        page.clear();
        size = 0;
        if let Some((next, _)) = entries.peek() {
            // Old pages that begin before the next entry are superseded.
            while old.next_if(|p| p.first.as_ref() < Some(*next)).is_some() {}
            if old.peek().is_some_and(|p| p.first.as_ref() == Some(*next)) {
                return;
            }
        }
    }
    if !page.is_empty() || out.is_empty() {
        emit(layout, &page, out, make);
    }
    old.for_each(drop);
}

/// Appends the page holding `entries` to `out`.
fn emit<K: Clone, V>(
    layout: &impl Layout<K, V>,
    entries: &[(&K, &V)],
    out: &mut Vec<CachedPage<K>>,
    make: &mut MakePage<'_>,
) {
    let bytes = layout.encode(out.len(), entries);
    out.push(CachedPage {
        first: entries.first().map(|(k, _)| (*k).clone()),
        page: make(out.len(), bytes),
        dirty: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `u32 -> u32` entries: each counts its value as its size, a
    /// boundary at keys divisible by 5.
    struct Numbers(usize);

    impl Layout<u32, u32> for Numbers {
        fn target(&self) -> usize {
            self.0
        }
        fn size(&self, _: &u32, value: &u32) -> usize {
            *value as usize
        }
        fn boundary(&self, key: &u32) -> bool {
            key.is_multiple_of(5)
        }
        fn encode(&self, index: usize, entries: &[(&u32, &u32)]) -> Vec<u8> {
            let mut out = vec![index as u8];
            for (k, v) in entries {
                out.extend(k.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            out
        }
    }

    #[test]
    fn a_touched_cut_equals_the_reference_and_reuses_the_rest() {
        let layout = Numbers(40);
        let mut map: BTreeMap<u32, u32> = (0..200).map(|k| (k, 1 + k % 7)).collect();
        let mut cache = PageCache::default();
        let first = cache.cut(&map, &layout);
        assert_eq!(first, cut_all(&map, &layout));
        assert!(first.len() > 10, "{} pages", first.len());
        // Every kind of change, each touched: a new key, a resized entry, a
        // removed one, a key below all others and one past the end.
        for (key, value) in [
            (1000, Some(3)),
            (50, Some(30)),
            (51, None),
            (0, None),
            (7, Some(1)),
        ] {
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
            cache.touch(&key);
            let before: Vec<Page> = cache.pages.iter().map(|p| p.page.clone()).collect();
            let after = cache.cut(&map, &layout);
            assert_eq!(after, cut_all(&map, &layout), "after changing {key}");
            let reused = after.iter().filter(|p| before.iter().any(|b| b.shares(p)));
            assert!(reused.count() + 4 >= after.len(), "after changing {key}");
        }
        // Emptied: one page without entries, then filled again.
        for key in map.keys().copied().collect::<Vec<_>>() {
            map.remove(&key);
            cache.touch(&key);
        }
        assert_eq!(cache.cut(&map, &layout), cut_all(&map, &layout));
        assert_eq!(cache.first_keys().collect::<Vec<_>>(), vec![None]);
        map.insert(9, 50);
        cache.touch(&9);
        assert_eq!(cache.cut(&map, &layout), cut_all(&map, &layout));
    }

    #[test]
    fn an_untouched_change_is_missed_which_is_why_every_change_must_be_touched() {
        let layout = Numbers(40);
        let mut map: BTreeMap<u32, u32> = (0..100).map(|k| (k, 3)).collect();
        let mut cache = PageCache::default();
        cache.cut(&map, &layout);
        map.insert(42, 9);
        assert_ne!(cache.cut(&map, &layout), cut_all(&map, &layout));
    }

    #[test]
    fn seeding_keeps_only_the_canonical_pages_given() {
        let layout = Numbers(40);
        let map: BTreeMap<u32, u32> = (0..100).map(|k| (k, 3)).collect();
        let canonical = cut_all(&map, &layout);
        let mut given = canonical.clone();
        given[1] = Page::new(b"not the canonical page".to_vec());
        let mut cache = PageCache::default();
        cache.seed(&map, &layout, &given);
        let pages = cache.cut(&map, &layout);
        assert_eq!(pages, canonical);
        assert!(pages[0].shares(&given[0]) && !pages[1].shares(&given[1]));
    }
}
