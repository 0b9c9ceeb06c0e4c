//! The vector store itself: collections of fixed-dimension vectors with metadata, searched by
//! cosine similarity. Pure and synchronous; the plugin wraps it in a lock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// The largest dimension a collection may have.
pub const MAX_DIMENSION: usize = 65_536;

/// Why an operation was refused; the text is what the caller reads in the response's `error`.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(message: String) -> Result<T, Refused> {
    Err(Refused(message))
}

/// One stored vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The vector, of its collection's dimension.
    pub vector: Vec<f32>,
    /// Its metadata; `content` is returned as the search result's content.
    pub metadata: HashMap<String, String>,
}

/// A search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// The vector's id.
    pub id: String,
    /// Cosine similarity to the query, in −1..=1 (0 for a zero vector).
    pub score: f32,
    /// The stored point.
    pub point: Point,
}

#[derive(Debug, Default)]
struct Collection {
    dimension: usize,
    points: BTreeMap<String, Point>,
}

/// All collections, with a bound on the vectors held.
#[derive(Debug)]
pub struct Store {
    collections: BTreeMap<String, Collection>,
    max_vectors: usize,
}

impl Store {
    /// An empty store holding at most `max_vectors` vectors over all collections.
    pub fn new(max_vectors: usize) -> Self {
        Self {
            collections: BTreeMap::new(),
            max_vectors,
        }
    }

    /// Changes the bound; vectors already held stay (new ones are refused until below it).
    pub fn set_max_vectors(&mut self, max_vectors: usize) {
        self.max_vectors = max_vectors;
    }

    fn len(&self) -> usize {
        self.collections.values().map(|c| c.points.len()).sum()
    }

    /// Creates `name` for vectors of `dimension`; creating it again with the same dimension
    /// is not an error.
    pub fn create_collection(&mut self, name: &str, dimension: u64) -> Result<(), Refused> {
        if name.is_empty() {
            return refuse("collection name is empty".into());
        }
        let dimension = match usize::try_from(dimension) {
            Ok(d) if (1..=MAX_DIMENSION).contains(&d) => d,
            _ => {
                return refuse(format!(
                    "collection {name:?}: vector_size {dimension} is not in 1..={MAX_DIMENSION}"
                ));
            }
        };
        match self.collections.get(name) {
            Some(c) if c.dimension != dimension => refuse(format!(
                "collection {name:?} exists with vector_size {}, not {dimension}",
                c.dimension
            )),
            Some(_) => Ok(()),
            None => {
                self.collections.insert(
                    name.to_string(),
                    Collection {
                        dimension,
                        points: BTreeMap::new(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Drops `name` and its vectors; dropping a missing collection is not an error.
    pub fn delete_collection(&mut self, name: &str) {
        self.collections.remove(name);
    }

    /// Inserts or replaces vector `id` of collection `name`. A missing collection is created
    /// with the vector's dimension.
    pub fn upsert(
        &mut self,
        name: &str,
        id: &str,
        vector: Vec<f32>,
        metadata: HashMap<String, String>,
    ) -> Result<(), Refused> {
        if id.is_empty() {
            return refuse(format!("collection {name:?}: id is empty"));
        }
        check_vector(name, &vector)?;
        let new = !self
            .collections
            .get(name)
            .is_some_and(|c| c.points.contains_key(id));
        if new && self.len() >= self.max_vectors {
            return refuse(format!(
                "collection {name:?}: the store holds its maximum of {} vectors (config key max_vectors)",
                self.max_vectors
            ));
        }
        if !self.collections.contains_key(name) {
            self.create_collection(name, vector.len() as u64)?;
        }
        let collection = self
            .collections
            .get_mut(name)
            .ok_or_else(|| Refused(format!("collection {name:?} does not exist")))?;
        if vector.len() != collection.dimension {
            return refuse(format!(
                "collection {name:?}: vector has {} dimensions, the collection {}",
                vector.len(),
                collection.dimension
            ));
        }
        collection
            .points
            .insert(id.to_string(), Point { vector, metadata });
        Ok(())
    }

    /// Removes vector `id`; a missing vector is not an error, a missing collection is.
    pub fn delete(&mut self, name: &str, id: &str) -> Result<(), Refused> {
        match self.collections.get_mut(name) {
            Some(c) => {
                c.points.remove(id);
                Ok(())
            }
            None => refuse(format!("collection {name:?} does not exist")),
        }
    }

    /// The `top_k` vectors of `name` most similar to `query`, best first (ties by id).
    pub fn search(&self, name: &str, query: &[f32], top_k: i32) -> Result<Vec<Hit>, Refused> {
        let Some(collection) = self.collections.get(name) else {
            return refuse(format!("collection {name:?} does not exist"));
        };
        let top_k = match usize::try_from(top_k) {
            Ok(k) if k > 0 => k,
            _ => return refuse(format!("top_k {top_k} is not positive")),
        };
        check_vector(name, query)?;
        if query.len() != collection.dimension {
            return refuse(format!(
                "collection {name:?}: query has {} dimensions, the collection {}",
                query.len(),
                collection.dimension
            ));
        }
        let mut hits: Vec<Hit> = collection
            .points
            .iter()
            .map(|(id, point)| Hit {
                id: id.clone(),
                score: cosine(query, &point.vector),
                point: point.clone(),
            })
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.id.cmp(&b.id))
        });
        hits.truncate(top_k);
        Ok(hits)
    }
}

fn check_vector(name: &str, vector: &[f32]) -> Result<(), Refused> {
    if vector.is_empty() {
        return refuse(format!("collection {name:?}: vector is empty"));
    }
    if vector.len() > MAX_DIMENSION {
        return refuse(format!(
            "collection {name:?}: vector has {} dimensions, more than {MAX_DIMENSION}",
            vector.len()
        ));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return refuse(format!(
            "collection {name:?}: vector element {i} is not a finite number"
        ));
    }
    Ok(())
}

/// Cosine similarity; 0 when either vector is zero.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(content: &str) -> HashMap<String, String> {
        HashMap::from([("content".to_string(), content.to_string())])
    }

    #[test]
    fn search_ranks_by_cosine_similarity_best_first() {
        let mut s = Store::new(10);
        s.create_collection("docs", 2).expect("created");
        s.upsert("docs", "east", vec![1.0, 0.0], meta("e"))
            .expect("upsert");
        s.upsert("docs", "north", vec![0.0, 2.0], meta("n"))
            .expect("upsert");
        s.upsert("docs", "north-east", vec![1.0, 1.0], meta("ne"))
            .expect("upsert");
        let hits = s.search("docs", &[1.0, 0.1], 2).expect("search");
        let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["east", "north-east"]);
        assert!((hits[0].score - 0.995).abs() < 1e-3, "{}", hits[0].score);
        assert_eq!(hits[0].point.metadata["content"], "e");
        // Replacing keeps one entry; deleting removes it.
        s.upsert("docs", "east", vec![-1.0, 0.0], meta("w"))
            .expect("replace");
        assert_eq!(s.search("docs", &[1.0, 0.0], 10).expect("search").len(), 3);
        assert_eq!(
            s.search("docs", &[1.0, 0.0], 10).expect("search")[2].id,
            "east"
        );
        s.delete("docs", "east").expect("delete");
        s.delete("docs", "east").expect("deleting again is fine");
        assert_eq!(s.search("docs", &[1.0, 0.0], 10).expect("search").len(), 2);
        // Equal scores: by id.
        s.upsert("docs", "a", vec![0.0, 1.0], meta(""))
            .expect("upsert");
        let hits = s.search("docs", &[0.0, 1.0], 3).expect("search");
        assert_eq!(hits[0].id, "a");
        assert_eq!(hits[1].id, "north");
    }

    #[test]
    fn upsert_creates_a_missing_collection_with_the_vectors_dimension() {
        let mut s = Store::new(10);
        s.upsert("auto", "x", vec![0.5, 0.5, 0.0], HashMap::new())
            .expect("created");
        let err = s
            .upsert("auto", "y", vec![1.0], HashMap::new())
            .expect_err("wrong dimension");
        assert_eq!(
            err.0,
            "collection \"auto\": vector has 1 dimensions, the collection 3"
        );
        s.create_collection("auto", 3).expect("same size again");
        let err = s.create_collection("auto", 4).expect_err("other size");
        assert!(err.0.contains("exists with vector_size 3, not 4"), "{err}");
    }

    #[test]
    fn bad_input_is_refused_naming_what_is_wrong() {
        let mut s = Store::new(2);
        let cases: Vec<(Result<(), Refused>, &str)> = vec![
            (s.create_collection("", 3), "collection name is empty"),
            (s.create_collection("c", 0), "vector_size 0 is not in 1..="),
            (s.create_collection("c", u64::MAX), "is not in 1..=65536"),
            (s.upsert("c", "", vec![1.0], HashMap::new()), "id is empty"),
            (
                s.upsert("c", "i", vec![], HashMap::new()),
                "vector is empty",
            ),
            (
                s.upsert("c", "i", vec![1.0, f32::NAN], HashMap::new()),
                "vector element 1 is not a finite number",
            ),
            (s.delete("nope", "i"), "collection \"nope\" does not exist"),
        ];
        for (result, expected) in cases {
            let err = result.expect_err(expected);
            assert!(err.0.contains(expected), "{err} / {expected}");
        }
        s.upsert("c", "1", vec![1.0], HashMap::new()).expect("one");
        s.upsert("c", "2", vec![1.0], HashMap::new()).expect("two");
        let err = s
            .upsert("c", "3", vec![1.0], HashMap::new())
            .expect_err("full");
        assert!(err.0.contains("maximum of 2 vectors"), "{err}");
        s.upsert("c", "2", vec![0.5], HashMap::new())
            .expect("replacing needs no room");
        for (query, k, expected) in [
            (vec![1.0], 0, "top_k 0 is not positive"),
            (
                vec![1.0, 2.0],
                1,
                "query has 2 dimensions, the collection 1",
            ),
            (vec![f32::INFINITY], 1, "not a finite number"),
        ] {
            let err = s.search("c", &query, k).expect_err(expected);
            assert!(err.0.contains(expected), "{err} / {expected}");
        }
        assert!(s.search("missing", &[1.0], 1).is_err());
        s.delete_collection("c");
        s.delete_collection("c");
        assert!(s.search("c", &[1.0], 1).is_err(), "dropped");
    }

    #[test]
    fn a_zero_vector_scores_zero() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
    }
}
