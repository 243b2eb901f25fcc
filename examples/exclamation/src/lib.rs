//! exclamation: the smallest stateless function; it appends `!` to every message.
//!
//! Run it:
//! ```text
//! cargo build --target wasm32-wasip2 --profile guest -p exclamation
//! fnhost topics produce words -m hello -m world
//! fnhost localrun --wasm target/wasm32-wasip2/guest/exclamation.wasm --name exclamation \
//!     --inputs words --output excited --until-idle
//! fnhost topics consume excited --until-idle
//! ```

use fnhost_guest::{Context, Error, Function};

#[derive(Default)]
struct Exclamation;

impl Function for Exclamation {
    type Input = String;
    type Output = String;

    fn process(&mut self, input: String, _ctx: &mut Context) -> Result<String, Error> {
        Ok(input + "!")
    }
}

fnhost_guest::export!(Exclamation);
