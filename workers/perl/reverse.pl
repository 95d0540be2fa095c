#!/usr/bin/perl
# A command pool's worker in Perl (Debian: libgearman-client-perl). It learns from
# the supervisor where to connect ($FARM_SERVERS, HOST:PORT,...) and what to serve
# ($FARM_FUNCTION: the pool's functions, comma-separated; each is a reverse).
use strict;
use warnings;
use Gearman::Worker;

# What it prints reaches farm's log at once, not in blocks (its stdout is a pipe) that a
# kill would lose.
$| = 1;

my @servers = split /,/, ($ENV{FARM_SERVERS} || '127.0.0.1:4730');
my @functions = split /,/, ($ENV{FARM_FUNCTION} || 'reverse');
my $worker = Gearman::Worker->new(job_servers => \@servers);
$worker->register_function($_ => sub { scalar reverse $_[0]->arg }) for @functions;
$SIG{TERM} = sub { exit 0 };
$worker->work while 1;
