package main

import "os"

func main() {
	os.Exit(cli(os.Args, os.Getenv, os.Stderr))
}
