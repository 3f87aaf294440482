//! The caller's working memory for private calls, kept across calls and layers.

/// Working memory of [`crate::client::PrivateConv::run_into`], kept by the caller across calls and layers so
/// that a stream of batches allocates (and page-faults) nothing: the tensor sent to the cloud
/// and the buffers of the answers.
#[derive(Default)]
pub struct CallBuffers {
    pub(super) sent: Vec<u32>,
    pub(super) answers: AnswerBuffers,
}

/// Buffers for the clouds' answers, kept across calls and layers: [`crate::client::PrivateConv::send`] has
/// the clouds write into them ([`crate::cloud::CloudBackend::conv_session_into`]) and
/// [`crate::client::PrivateConv::recycle`] takes them back from a decrypted [`crate::client::Answer`]. Freeing a tensor of
/// tens of megabytes per call (and page-faulting a fresh one in) costs about a tenth of a
/// whole network's client time otherwise. An answer is what the cloud sent: nothing secret is
/// kept here.
#[derive(Default)]
pub struct AnswerBuffers {
    free: Vec<Vec<u32>>,
}

impl std::fmt::Debug for CallBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallBuffers").field("sent", &self.sent.len()).field("answers", &self.answers).finish()
    }
}

impl std::fmt::Debug for AnswerBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let capacities: Vec<usize> = self.free.iter().map(Vec::capacity).collect();
        f.debug_struct("AnswerBuffers").field("capacities", &capacities).finish()
    }
}

/// Buffers an [`AnswerBuffers`] keeps at most (a network has at most two answers in flight, of
/// two clouds each).
const MAX_FREE_ANSWERS: usize = 8;

impl AnswerBuffers {
    /// A buffer for an answer of `len` elements: the smallest kept one that holds it, else the
    /// largest kept one (the cloud grows it), else a new one.
    pub(super) fn take(&mut self, len: usize) -> Vec<u32> {
        let fits =
            (0..self.free.len()).filter(|&i| self.free[i].capacity() >= len).min_by_key(|&i| self.free[i].capacity());
        let pick = fits.or_else(|| (0..self.free.len()).max_by_key(|&i| self.free[i].capacity()));
        pick.map(|i| self.free.swap_remove(i)).unwrap_or_default()
    }

    /// Keeps `buf` for a later answer, dropping the smallest buffer beyond
    /// [`MAX_FREE_ANSWERS`].
    pub(super) fn give(&mut self, buf: Vec<u32>) {
        self.free.push(buf);
        if self.free.len() > MAX_FREE_ANSWERS
            && let Some(i) = (0..self.free.len()).min_by_key(|&i| self.free[i].capacity())
        {
            self.free.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AnswerBuffers, MAX_FREE_ANSWERS};

    #[test]
    fn answer_buffers_take_the_smallest_that_fits_else_the_largest_and_keep_a_bounded_number() {
        let mut bufs = AnswerBuffers::default();
        for cap in [10, 1000, 100] {
            bufs.give(Vec::with_capacity(cap));
        }
        assert_eq!(bufs.take(50).capacity(), 100);
        assert_eq!(bufs.take(5000).capacity(), 1000);
        assert_eq!(bufs.take(1).capacity(), 10);
        assert_eq!(bufs.take(1).capacity(), 0, "a new buffer when none is kept");
        for cap in 1..=MAX_FREE_ANSWERS + 3 {
            bufs.give(Vec::with_capacity(cap * 10));
        }
        let mut kept: Vec<usize> = bufs.free.iter().map(Vec::capacity).collect();
        kept.sort_unstable();
        assert_eq!(kept, (4..=MAX_FREE_ANSWERS + 3).map(|c| c * 10).collect::<Vec<_>>(), "the smallest are dropped");
    }
}
