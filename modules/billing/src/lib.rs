//! Example module `billing`: `charge` carries a deliberate bug (feature `rounding-bug`, on by
//! default) that a rebuilt version without the feature fixes; the cage picks the fix up live.

use cage_sdk::{export_module, CallError, Ctx};
use serde::{Deserialize, Serialize};

const VERSION: &str = if cfg!(feature = "rounding-bug") {
    "0.9.0"
} else {
    "0.9.1"
};

#[derive(Deserialize)]
struct Charge {
    customer: String,
    cents: u64,
}

#[derive(Serialize)]
struct Receipt {
    customer: String,
    cents: u64,
    receipt: String,
}

fn charge(ctx: &Ctx, args: Charge) -> Result<Receipt, CallError> {
    if cfg!(feature = "rounding-bug") && args.cents.is_multiple_of(100) {
        return Err(CallError::new(format!(
            "cannot round {} cents for {} (billing {VERSION} has the rounding bug; rebuild without feature `rounding-bug`)",
            args.cents, args.customer
        )));
    }
    if args.cents == 0 {
        return Err(CallError::bad_arguments("cents must be positive"));
    }
    Ok(Receipt {
        receipt: format!("R-{}-{}", ctx.call_id(), args.cents),
        customer: args.customer,
        cents: args.cents,
    })
}

export_module! {
    name: "billing",
    version: VERSION,
    methods: [charge],
}
