//! Streaming keeps memory bounded: a counting global allocator measures the peak heap while files
//! ten times the batch size are streamed. Alone in its test binary so no other test's allocations
//! are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::files;
use dbksvd::data::{ActivationFile, ActivationSource, BatchOrder, Stats};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap growth (bytes above what was live before) while `work` runs.
fn peak_during(work: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    work();
    PEAK.load(Ordering::SeqCst) - before
}

#[test]
fn streaming_a_file_ten_batches_long_stays_below_three_batches_of_heap() {
    let (batch, d) = (512, 384);
    let rows = 10 * batch + 17;
    let values = common::uniform(rows * d, 5);
    let dir = tempfile::tempdir().unwrap();
    let paths = [
        files::write(
            dir.path(),
            "big.safetensors",
            &files::activations_safetensors(&values, [rows, d], "BF16"),
        ),
        files::write(
            dir.path(),
            "big.npy",
            &files::activations_npy(&values, [rows, d], "<f4"),
        ),
    ];
    drop(values);
    let batch_bytes = batch * d * std::mem::size_of::<f32>();
    for path in &paths {
        for order in [
            BatchOrder::sequential(batch),
            BatchOrder::shuffled(batch, 9).with_window(4),
        ] {
            let mut streamed = 0;
            let peak = peak_during(|| {
                let file = ActivationFile::open(path).unwrap();
                for epoch in 0..2 {
                    for b in file.batches(&order, epoch).unwrap() {
                        let b = b.unwrap();
                        // Touch the data so the batch is really filled.
                        assert!(b.data.iter().all(|v| v.abs() <= 1.0));
                        streamed += b.len();
                    }
                }
                Stats::compute(&file, batch).unwrap();
            });
            assert_eq!(streamed, 2 * rows);
            eprintln!(
                "{} {:?}: peak heap {peak} bytes = {:.2} batches",
                path.display(),
                order.shuffle,
                peak as f64 / batch_bytes as f64
            );
            assert!(
                peak < 3 * batch_bytes,
                "{}: peak heap {peak} bytes, 3 batches are {}",
                path.display(),
                3 * batch_bytes
            );
            // The file itself (10 batches) must not have been read onto the heap.
            let file_bytes = std::fs::metadata(path).unwrap().len() as usize;
            assert!(peak < file_bytes / 2);
        }
    }
    // Sanity: the counter does see a batch-sized allocation.
    let seen = peak_during(|| drop(std::hint::black_box(vec![0u8; batch_bytes])));
    assert!(seen >= batch_bytes);
}
