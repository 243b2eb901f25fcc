//! The embedded engine on its log: segments spanned and freed, damage found, long steps.

use super::*;

#[test]
fn appends_over_many_segments_read_back_from_any_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let values: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 3000]).collect();
    for value in &values {
        store.produce(&topic("big"), vec![OutMessage::new(value.clone())]).unwrap();
    }
    assert!(store.inner.log.segment_ids().len() > 3, "the appends went to several segments");
    let subscription = store.subscribe(spec(&["big"], Some("s"), Position::Earliest)).unwrap();
    let mut read = Vec::new();
    for max in [2, 3, 10] {
        read.extend(subscription.fetch(max, Duration::ZERO).unwrap().into_iter().map(|m| (m.sequence, m.body.value)));
    }
    let expected: Vec<(u64, Vec<u8>)> = (0..).zip(values).collect();
    assert_eq!(read, expected);
}

/// Recovery reads the log a bounded number of bytes at a time: a segment holding more than one
/// read (big appends and state records) must come back whole, not from the next segment on.
#[test]
fn a_segment_larger_than_one_recovery_read_comes_back_whole_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let fqfn = Fqfn::parse("t/ns/f").unwrap();
    let values: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 600 << 10]).collect();
    // Segments larger than recovery's 16 MiB read, and a second one after the first.
    let options = StoreOptions { log_segment_bytes: 20 << 20, clean_interval: Duration::from_secs(3600) };
    {
        let store = open_with(dir.path(), &options).unwrap();
        let subscription = store.subscribe(spec(&["out"], None, Position::Earliest)).unwrap();
        for (i, value) in values.iter().enumerate() {
            store.produce(&topic("big"), vec![OutMessage::new(value.clone())]).unwrap();
            commit_state(subscription.as_ref(), &fqfn, &[(&format!("k{i}"), Change::Put(value[..16].to_vec(), None))]);
        }
        assert_eq!(store.inner.log.segment_ids().len(), 2, "a full segment, past recovery's read size, and another");
    }
    let store = open_with(dir.path(), &options).unwrap();
    let subscription = store.subscribe(spec(&["big"], Some("s"), Position::Earliest)).unwrap();
    let read: Vec<Vec<u8>> =
        subscription.fetch(100, Duration::ZERO).unwrap().into_iter().map(|m| m.body.value).collect();
    assert_eq!(read.len(), values.len(), "every append is readable again");
    assert!(read == values, "the appends read back as written");
    for (i, written) in values.iter().enumerate() {
        let stored = value(&store, &fqfn, &format!("k{i}"));
        assert_eq!(stored, Some(StateValue::Bytes(written[..16].to_vec())), "state record {i} came back");
    }
}

#[test]
fn segments_go_once_every_subscription_has_acknowledged_them_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_small(dir.path());
        let first = store.subscribe(spec(&["t"], Some("first"), Position::Earliest)).unwrap();
        let second = store.subscribe(spec(&["t"], Some("second"), Position::Earliest)).unwrap();
        for round in 0..50 {
            produce(&store, "t", &[&format!("{round:0>200}"), &format!("{round:0>200}")]);
        }
        let full = store.log_bytes();
        assert_eq!(ack_everything(first.as_ref()), 100);
        store.clean().unwrap();
        assert!(store.log_bytes() >= full, "the second subscription still needs every message");
        assert_eq!(ack_everything(second.as_ref()), 100);
        // The first pass checkpoints the cursors the old segments hold; the second finds them free.
        store.clean().unwrap();
        store.clean().unwrap();
        assert_eq!(store.inner.log.segment_ids().len(), 1, "only the active segment is left");
        assert!(store.log_bytes() < 4096 + 1024);
    }
    let store = open_small(dir.path());
    assert_eq!(produce(&store, "t", &["after"]), vec![100], "sequence numbers go on after the deleted messages");
    let first = store.subscribe(spec(&["t"], Some("first"), Position::Earliest)).unwrap();
    assert_eq!(values(&first.fetch(10, Duration::ZERO).unwrap()), ["after"]);
}

#[test]
fn a_topic_without_subscriptions_keeps_its_messages_while_others_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    produce(&store, "kept", &["k0", "k1"]);
    let busy = store.subscribe(spec(&["busy"], Some("s"), Position::Earliest)).unwrap();
    for round in 0..60 {
        produce(&store, "busy", &[&format!("{round:0>300}")]);
        ack_everything(busy.as_ref());
    }
    let before = store.inner.log.segment_ids().len();
    store.clean().unwrap();
    store.clean().unwrap();
    let after = store.inner.log.segment_ids().len();
    assert!(after < before && after <= 3, "{before} segments, then {after}");
    drop((busy, store));
    let store = open_small(dir.path());
    let late = store.subscribe(spec(&["kept"], Some("late"), Position::Earliest)).unwrap();
    assert_eq!(values(&late.fetch(10, Duration::ZERO).unwrap()), ["k0", "k1"]);
}

#[test]
fn a_missing_segment_that_holds_unacknowledged_messages_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_small(dir.path());
        let _subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
        for round in 0..40 {
            produce(&store, "t", &[&format!("{round:0>300}")]);
        }
        assert!(store.inner.log.segment_ids().len() > 3);
    }
    let log = dir.path().join(LOG_DIR);
    let mut segments: Vec<_> = std::fs::read_dir(&log).unwrap().map(|entry| entry.unwrap().path()).collect();
    segments.sort();
    std::fs::remove_file(&segments[1]).unwrap();
    match open_with(dir.path(), &StoreOptions::default()) {
        Err(OpenError::Other { reason, .. }) => {
            assert!(reason.contains("missing") && reason.contains("persistent://public/default/t"), "{reason}")
        }
        Err(other) => panic!("expected a missing-messages error, got {other}"),
        Ok(_) => panic!("a missing segment went unnoticed"),
    }
}

/// Segment files of the store in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> =
        std::fs::read_dir(dir.join(LOG_DIR)).unwrap().map(|entry| entry.unwrap().path()).collect();
    segments.sort();
    segments
}

#[test]
fn an_unfinished_write_at_the_end_is_cut_and_every_acknowledged_message_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..12u64 {
        let store = open_small(dir.path());
        let value = format!("m{round}");
        assert_eq!(produce(&store, "t", &[&value]), vec![round], "numbering goes on after the cut");
        acknowledged.push(value);
        drop(store);
        // What a crash in the middle of the next group leaves: part of a record (here a random
        // prefix of a copy of the whole last segment, or bytes that are no record at all).
        let last = segment_files(dir.path()).pop().unwrap();
        let whole = std::fs::read(&last).unwrap();
        let mut torn = whole.clone();
        let junk: Vec<u8> = if round % 2 == 0 {
            whole[..(round as usize * 7919) % whole.len()].to_vec()
        } else {
            (0..round * 5).map(|byte| (byte * 31) as u8).collect()
        };
        torn.extend_from_slice(&junk);
        std::fs::write(&last, &torn).unwrap();
    }
    let store = open_small(dir.path());
    let reader = store.subscribe(spec(&["t"], Some("r"), Position::Earliest)).unwrap();
    assert_eq!(values(&reader.fetch(100, Duration::ZERO).unwrap()), acknowledged);
}

#[test]
fn a_flipped_bit_in_an_earlier_segment_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_small(dir.path());
        for round in 0..60 {
            produce(&store, "t", &[&format!("{round:0>300}")]);
        }
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() > 3);
    let middle = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x04;
    std::fs::write(middle, &bytes).unwrap();
    match open_with(dir.path(), &StoreOptions::default()) {
        Err(OpenError::Other { reason, .. }) => {
            assert!(reason.contains(&middle.display().to_string()) && reason.contains("backup"), "{reason}")
        }
        Err(other) => panic!("expected damage in {}, got {other}", middle.display()),
        Ok(_) => panic!("damage in {} went unnoticed", middle.display()),
    }
}

#[test]
fn a_step_longer_than_a_record_spans_several_and_a_crash_inside_it_drops_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 4 << 20]).collect();
    {
        let store = open(dir.path());
        produce(&store, "t", &["before"]);
        let sequences = store.produce(&topic("t"), big.iter().map(|v| OutMessage::new(v.clone())).collect()).unwrap();
        assert_eq!(sequences, (1..21).collect::<Vec<_>>());
        assert!(store.inner.log.end_id() >= 3, "the 80 MiB append took several records");
    }
    {
        let store = open(dir.path());
        let reader = store.subscribe(spec(&["t"], None, Position::Earliest)).unwrap();
        let read: Vec<Vec<u8>> = reader.fetch(100, Duration::ZERO).unwrap().into_iter().map(|m| m.body.value).collect();
        assert_eq!(read.len(), 21);
        assert_eq!(&read[1..], &big[..]);
    }
    // A crash that tore the step's last record: the records before it are whole, but the step is not.
    let last = segment_files(dir.path()).pop().unwrap();
    let length = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(length - 1000).unwrap();
    let store = open(dir.path());
    let reader = store.subscribe(spec(&["t"], None, Position::Earliest)).unwrap();
    assert_eq!(values(&reader.fetch(100, Duration::ZERO).unwrap()), ["before"]);
    assert_eq!(produce(&store, "t", &["after"]), vec![1], "the dropped step's numbers are given again");
    drop((reader, store));
    let store = open(dir.path());
    let reader = store.subscribe(spec(&["t"], None, Position::Earliest)).unwrap();
    assert_eq!(values(&reader.fetch(100, Duration::ZERO).unwrap()), ["before", "after"]);
}

#[test]
fn messages_appended_while_the_cleaner_frees_segments_all_reach_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut read = Vec::new();
    const SENT: usize = 2000;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                store.clean().unwrap();
            }
        });
        // Appends as fast as they go while the subscription acknowledges, so segments are freed
        // all along.
        let producing = scope.spawn(|| {
            for sent in 0..SENT {
                produce(&store, "t", &[&format!("{sent:0>100}")]);
            }
        });
        while !producing.is_finished() || read.len() < SENT {
            let messages = subscription.fetch(100, Duration::from_millis(10)).unwrap();
            read.extend(values(&messages));
            subscription.commit(Effects { acks: Acks::of(&messages), ..Effects::default() }).unwrap();
            if producing.is_finished() && messages.is_empty() {
                break;
            }
        }
        stop.store(true, Ordering::Release);
    });
    assert_eq!(read, (0..SENT).map(|sent| format!("{sent:0>100}")).collect::<Vec<_>>());
}
