# semioflow: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.semioflow-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-slow lock clean-venv speech-tools browser-tools db-tools ocr-tools

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "semioflow needs Python 3.11 or 3.12"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP) ocr-tools  ## create .venv with the locked dependency set (and Tesseract, the text audit's OCR)
	@mkdir -p .semioflow && chmod 700 .semioflow  # runtime state and DVC's site cache (.dvc/config): owner-only

demo: install  ## phantom cohorts + smoke models, every stage of both tracks, the HTML report
	@$(BIN)/semioflow demo
	@echo "run 'make demo' again to see every stage cached"

# Tesseract 5 is deidentify's independent text audit (a second OCR engine besides PP-OCR): installed here when
# apt-get can (root); without it deidentify stops with an error saying how to install it (never a silent pass).
ocr-tools:
	@command -v tesseract >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && apt-get install -y -qq tesseract-ocr; } >/dev/null 2>&1; } \
	  || echo "tesseract not installed: deidentify needs it (sudo apt-get install tesseract-ocr)"

# espeak-ng speaks the sentence the real-Whisper transcript test must hear; installed here when
# apt-get can (root), otherwise that one test skips and says why.
speech-tools:
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && apt-get install -y -qq espeak-ng; } >/dev/null 2>&1; } \
	  || echo "espeak-ng not installed: the real-speech transcript test will skip"

# Chromium drives the report screenshot and review-app browser tests (Playwright with the system browser;
# Playwright's own download is never used); installed here when apt-get can (root), otherwise they skip.
browser-tools:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1; } \
	  || echo "chromium not installed: the browser tests (report, review app) will skip"

# PostgreSQL server binaries: the review database and the Prefect server are tested on a throwaway
# PostgreSQL (tests/pg_server.py); installed here when apt-get can (root), otherwise those tests skip.
db-tools:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && { apt-get update -qq && apt-get install -y -qq postgresql; } >/dev/null 2>&1; } \
	  || echo "postgresql not installed: the PostgreSQL tests (review database, Prefect server) will skip"

# Tests run with empty, temporary per-user caches (model cache, XDG cache: Hugging Face, torch,
# matplotlib), so a first use that races or needs a missing install step fails here, not on a user's
# fresh machine. The folder is removed afterwards.
FRESH_CACHES = c=$$(mktemp -d -t semioflow-test-caches.XXXXXX) && trap 'rm -rf "$$c"' EXIT && \
	export SEMIOFLOW_MODEL_CACHE="$$c/models" XDG_CACHE_HOME="$$c/xdg" MPLCONFIGDIR="$$c/mpl" &&

test: install speech-tools browser-tools db-tools  ## the default test suite (slow tests excluded), empty caches
	@$(FRESH_CACHES) echo "test caches: $$c (empty)" && $(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install  ## only the tests marked slow, empty caches
	@$(FRESH_CACHES) $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

lock:  ## re-resolve the dependency set into constraints.txt (fresh venv)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	.venv-lock/bin/python -m pip check
	{ echo "# Lock: exact versions resolved on Python 3.11 / linux x86_64 (pip freeze)."; \
	  echo "# Regenerate with: make lock"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^semioflow'; } > constraints.txt
	rm -rf .venv-lock

clean-venv:
	rm -rf $(VENV)
