//! bootstorm: the boot-storm load generator (issue 8). Its client side grows with each protocol;
//! until the first protocol lands it only reports what it will measure.

fn main() {
    eprintln!("bootstorm: no protocol client is built yet (see issue 8); nothing to run");
    std::process::exit(2);
}
