// Package testenv finds what the tests need from the rest of the repository: the Python that runs the
// daemon and the tiny test model. Environment variables override both.
package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// RepoRoot is the repository that holds this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", "..", ".."))
}

// Python is $MLXD_PYTHON, by default the repository's .venv (made by scripts/setup.sh).
func Python(tb testing.TB) string {
	return existing(tb, "MLXD_PYTHON", filepath.Join(RepoRoot(), ".venv", "bin", "python"),
		"run scripts/setup.sh or set MLXD_PYTHON to a python with mlxd installed")
}

// Model is $MLXD_TEST_MODEL, by default the tiny random-weight llama of the parity fixtures.
func Model(tb testing.TB) string {
	return existing(tb, "MLXD_TEST_MODEL", filepath.Join(RepoRoot(), "tests", "fixtures", "parity", "llama"),
		"set MLXD_TEST_MODEL to a model folder")
}

func existing(tb testing.TB, env, fallback, hint string) string {
	tb.Helper()
	path := os.Getenv(env)
	if path == "" {
		path = fallback
	}
	if _, err := os.Stat(path); err != nil {
		tb.Fatalf("%s: %v (%s)", env, err, hint)
	}
	return path
}
