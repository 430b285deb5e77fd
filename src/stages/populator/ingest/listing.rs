//! ListObjects (v1 and v2) over the buffer's current objects: prefix, delimiter, start-after and
//! continuation, max-keys — computed from a sorted listing that starts after the marker and
//! stops once the page is full; no state kept between pages.

use crate::storage::Listed;

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<Listed>,
    pub common_prefixes: Vec<String>,
    /// Where the next page starts (the last key or prefix of this one), if truncated.
    pub next: Option<String>,
}

/// What a ListObjects request asks for.
pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Keys at or before this are skipped (marker, start-after or the continuation token).
    pub after: Option<&'a str>,
    pub max_keys: usize,
}

/// Pages `listed` (sorted by key) per `query`.
#[cfg(test)]
pub fn page(listed: Vec<Listed>, query: &Query<'_>) -> Page {
    let mut pager = Pager::new(query);
    for object in listed {
        if !pager.offer(object) {
            break;
        }
    }
    pager.finish()
}

/// A page built as a sorted listing comes in, so the listing can stop once it is full.
pub struct Pager<'a> {
    query: &'a Query<'a>,
    out: Page,
    full: bool,
}

impl<'a> Pager<'a> {
    pub fn new(query: &'a Query<'a>) -> Self {
        Self {
            query,
            out: Page::default(),
            // S3 answers max-keys=0 with an empty page that is not truncated.
            full: query.max_keys == 0,
        }
    }

    /// Takes the listing's next object; false once the page is full (nothing after it is
    /// needed).
    pub fn offer(&mut self, object: Listed) -> bool {
        let (query, out) = (self.query, &mut self.out);
        if self.full {
            return false;
        }
        if !object.key.starts_with(query.prefix) {
            return true;
        }
        if query
            .after
            .is_some_and(|after| object.key.as_str() <= after)
        {
            return true;
        }
        let rest = &object.key[query.prefix.len()..];
        let rolled_up = query.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
            rest.find(d)
                .map(|at| format!("{}{}", query.prefix, &rest[..at + d.len()]))
        });
        if let Some(common) = &rolled_up {
            if out.common_prefixes.last() == Some(common) {
                return true;
            }
            // Everything under a prefix already returned on an earlier page is behind `after`.
            if query
                .after
                .is_some_and(|after| after.starts_with(common.as_str()))
            {
                return true;
            }
        }
        if out.objects.len() + out.common_prefixes.len() == query.max_keys {
            out.next = Some(
                out.common_prefixes
                    .last()
                    .filter(|p| out.objects.last().is_none_or(|o| o.key < **p))
                    .cloned()
                    .or_else(|| out.objects.last().map(|o| o.key.clone()))
                    .unwrap_or_default(),
            );
            self.full = true;
            return false;
        }
        match rolled_up {
            Some(common) => out.common_prefixes.push(common),
            None => out.objects.push(object),
        }
        true
    }

    pub fn finish(self) -> Page {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EntryKind;

    fn listed(keys: &[&str]) -> Vec<Listed> {
        keys.iter()
            .map(|k| Listed {
                key: k.to_string(),
                version_id: None,
                kind: EntryKind::Object,
                size: 1,
                etag: None,
                last_modified_ms: 0,
                is_latest: true,
            })
            .collect()
    }

    fn keys(page: &Page) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn prefix_delimiter_and_pages() {
        let all = ["a/1", "a/2", "b", "c/x/1", "c/y", "d"];
        let query = |after, max_keys| Query {
            prefix: "",
            delimiter: Some("/"),
            after,
            max_keys,
        };
        let first = page(listed(&all), &query(None, 2));
        assert_eq!(first.common_prefixes, vec!["a/"]);
        assert_eq!(keys(&first), vec!["b"]);
        assert_eq!(first.next.as_deref(), Some("b"));
        let second = page(listed(&all), &query(first.next.as_deref(), 2));
        assert_eq!(second.common_prefixes, vec!["c/"]);
        assert_eq!(keys(&second), vec!["d"]);
        assert_eq!(second.next, None);

        let under_c = page(
            listed(&all),
            &Query {
                prefix: "c/",
                delimiter: None,
                after: None,
                max_keys: 1000,
            },
        );
        assert_eq!(keys(&under_c), vec!["c/x/1", "c/y"]);
    }

    #[test]
    fn max_keys_zero_is_an_empty_page_that_is_not_truncated() {
        let none = page(
            listed(&["a", "b"]),
            &Query {
                prefix: "",
                delimiter: None,
                after: None,
                max_keys: 0,
            },
        );
        assert_eq!(none, Page::default());
    }

    #[test]
    fn a_prefix_ending_a_page_is_not_repeated() {
        let all = ["a/1", "a/2", "b"];
        let first = page(
            listed(&all),
            &Query {
                prefix: "",
                delimiter: Some("/"),
                after: None,
                max_keys: 1,
            },
        );
        assert_eq!(first.common_prefixes, vec!["a/"]);
        assert_eq!(first.next.as_deref(), Some("a/"));
        let second = page(
            listed(&all),
            &Query {
                prefix: "",
                delimiter: Some("/"),
                after: first.next.as_deref(),
                max_keys: 1,
            },
        );
        assert!(second.common_prefixes.is_empty());
        assert_eq!(keys(&second), vec!["b"]);
    }
}
