from textxfer.cli import main

main()
