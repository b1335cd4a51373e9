package main

import (
	"context"
	"fmt"
)

func init() {
	register(&command{name: "graph", usage: "FILE: print the dependency graph in DOT", run: runGraph})
}

func runGraph(_ context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("graph", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "graph", true)
	if err != nil {
		return err
	}
	s, err := openSession(env, file, &cf, false)
	if err != nil {
		return err
	}
	fmt.Fprint(env.stdout, s.Graph.DOT())
	return nil
}
