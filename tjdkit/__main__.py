from tjdkit.cli import main

main()
