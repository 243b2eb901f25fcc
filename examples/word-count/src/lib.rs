//! word-count: Pulsar's classic counter example; it counts every word it sees in state counters.
//!
//! Each message is a sentence; each whitespace-separated word's counter goes up by one.
//! Nothing is written to an output topic: read the counts with `fnhost functions querystate`.
//!
//! Run it:
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest -p word-count
//! fnhost topics produce sentences -m "the quick fox" -m "the lazy dog"
//! fnhost localrun --wasm target/wasm32-wasip2/guest/word_count.wasm --name word-count \
//!     --inputs sentences --until-idle
//! fnhost functions querystate --fqfn public/default/word-count --key the
//! ```

use fnhost_guest::{Context, Error, Function};

#[derive(Default)]
struct WordCount;

impl Function for WordCount {
    type Input = String;
    type Output = ();

    fn process(&mut self, sentence: String, ctx: &mut Context) -> Result<(), Error> {
        let state = ctx.state();
        for word in sentence.split_whitespace() {
            state.incr_counter(word, 1)?;
        }
        ctx.record_metric("words", sentence.split_whitespace().count() as f64);
        Ok(())
    }
}

fnhost_guest::export!(WordCount);
