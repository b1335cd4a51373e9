package main

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

func init() {
	register(&command{name: "fmt", usage: "FILE: rewrite a runbook in canonical format (-check: only report)", run: runFmt})
}

func runFmt(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("fmt", nil)
	check := fs.Bool("check", false, "report whether the file is formatted; change nothing")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "fmt", true)
	if err != nil {
		return err
	}
	src, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read runbook: %w", err)
	}
	// Refuse to format what does not parse: hclwrite would keep the mistake.
	if _, diags := hclsyntax.ParseConfig(src, file, hcl.InitialPos); diags.HasErrors() {
		return printDiags(env, map[string]*hcl.File{file: {Bytes: src}}, diags, nil)
	}
	out := hclwrite.Format(src)
	if bytes.Equal(out, src) {
		return nil
	}
	if *check {
		fmt.Fprintln(env.stdout, file)
		return fmt.Errorf("%s is not formatted", file)
	}
	info, err := os.Stat(file)
	if err != nil {
		return fmt.Errorf("stat runbook: %w", err)
	}
	if err := atomicfile.WriteFile(file, out, info.Mode().Perm()); err != nil {
		return fmt.Errorf("write runbook: %w", err)
	}
	fmt.Fprintln(env.stdout, file)
	return nil
}
