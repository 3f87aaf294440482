//! The device's cache of session kernels: buffers keyed by session kernel and plan chunk,
//! bounded in bytes, least recently used first out, dropped with their sessions.

use std::collections::{HashMap, VecDeque};

use vericonv::{KernelRef, SessionKernel};

use crate::shaders::ConvKernel;

/// A cached kernel buffer: the session kernel's id, its first output channel and channel count
/// in the plan, and the layout the pipeline reads.
pub(crate) type KernelKey = (u128, usize, usize, ConvKernel);

/// Kernel buffers on the device, least recently used first out, bounded in bytes.
pub(crate) struct KernelCache {
    capacity: u64,
    used: u64,
    buffers: HashMap<KernelKey, (wgpu::Buffer, KernelRef)>,
    order: VecDeque<KernelKey>,
}

impl KernelCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self { capacity, used: 0, buffers: HashMap::new(), order: VecDeque::new() }
    }

    /// The buffer cached for `key`, if it holds `session`'s kernel (an id drawn alike by
    /// another session is a miss, and its entry goes).
    pub(crate) fn get(&mut self, key: &KernelKey, session: &SessionKernel) -> Option<wgpu::Buffer> {
        let (buf, of) = self.buffers.get(key)?;
        if !of.refers_to(session) {
            self.remove(key);
            return None;
        }
        let buf = buf.clone();
        self.order.retain(|k| k != key);
        self.order.push_back(*key);
        Some(buf)
    }

    pub(crate) fn remove(&mut self, key: &KernelKey) {
        if let Some((b, _)) = self.buffers.remove(key) {
            self.used -= b.size();
        }
        self.order.retain(|k| k != key);
    }

    pub(crate) fn insert(&mut self, key: KernelKey, entry: (wgpu::Buffer, KernelRef)) {
        let size = entry.0.size();
        if size > self.capacity || self.buffers.contains_key(&key) {
            return;
        }
        // Kernels of ended sessions first, then the least recently used.
        let dead: Vec<KernelKey> = self.buffers.iter().filter(|(_, (_, r))| !r.is_alive()).map(|(k, _)| *k).collect();
        dead.iter().for_each(|k| self.remove(k));
        while self.used + size > self.capacity {
            let Some(old) = self.order.front().copied() else { break };
            self.remove(&old);
        }
        self.used += size;
        self.buffers.insert(key, entry);
        self.order.push_back(key);
    }
}
