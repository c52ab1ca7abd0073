# The two commands a newcomer needs (see README.md):
#   make demo   install, build, start a daemon, drive it end to end, stop it
#   make test   install test dependencies, lint, run every test
.PHONY: demo test deps build lint clean

CARGO ?= cargo

deps:
	bash scripts/install-deps.sh

build: deps
	$(CARGO) build --locked --bins --examples

demo: build
	bash scripts/demo.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# compat-tests start the real binaries, so they are built first.
test: build lint
	bash scripts/test.sh

clean:
	$(CARGO) clean
