#Requires -Version 7.4
#Requires -Modules ExchangeOnlineManagement
<#
.SYNOPSIS
    Proves that a mailworker app may send as exactly its approved mailboxes: every -Mailbox must be
    InScope True for "Application Mail.Send", and every -DeniedMailbox must NOT be. "Application
    Mail.ReadWrite" (draft delivery mode) must cover the approved mailboxes with -DraftMode and none
    without it, and never a denied one.

.DESCRIPTION
    Runs Test-ServicePrincipalAuthorization -Identity <service principal> -Resource <mailbox> for each
    mailbox and prints a table (Mailbox, Expected, InScope, Result). Exit code 1 if any check fails.
    Always include at least one mailbox that must be denied: a scope that matches everything (a typo in
    the filter, or a tenant-wide Entra grant) only shows up there.

    Test-ServicePrincipalAuthorization reads the RBAC configuration directly. Real Graph calls use a cache
    that applies changes after 30 minutes to 2 hours: a PASS here right after onboarding does not mean
    sendMail already succeeds (it may return 403 ErrorAccessDenied for up to 2 hours), and after
    offboarding the app may keep sending for as long.
    It does not see the tenant-wide Graph Mail.Send permission granted in Entra; run
    ../entra/Test-TenantWideMailSend.ps1 as well.

.PARAMETER AppName
    mailworker app name; the Exchange service principal is looked up as 'mailworker-<AppName>'.
.PARAMETER ServicePrincipal
    Exchange service principal identity (object id, app id or display name) instead of -AppName.
.PARAMETER Mailbox
    Approved mailboxes: must be in scope.
.PARAMETER DeniedMailbox
    Mailboxes outside the scope: must be denied. At least one.
.PARAMETER DraftMode
    The app uses mailworker's draft delivery mode: also check "Application Mail.ReadWrite" (the right to
    read, change and delete mail), which must cover exactly the same mailboxes as Mail.Send. Without
    -DraftMode, a Mail.ReadWrite grant on any checked mailbox FAILS: the app holds more than it uses.

.EXAMPLE
    ./Test-MailworkerMailboxScope.ps1 -AppName billing -Mailbox billing@contoso.com, invoices@contoso.com -DeniedMailbox ceo@contoso.com
.EXAMPLE
    ./Test-MailworkerMailboxScope.ps1 -AppName reports -Mailbox reports@contoso.com -DeniedMailbox ceo@contoso.com -DraftMode
#>
[CmdletBinding(DefaultParameterSetName = 'ByName')]
param(
    [Parameter(Mandatory, ParameterSetName = 'ByName')]
    [ValidatePattern('^[a-z0-9][a-z0-9-]{0,38}[a-z0-9]$')]
    [string] $AppName,

    [Parameter(Mandatory, ParameterSetName = 'ById')]
    [ValidateNotNullOrEmpty()]
    [string] $ServicePrincipal,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string[]] $Mailbox,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string[]] $DeniedMailbox,

    [switch] $DraftMode,

    [string] $Organization
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot 'MailworkerExchange.psm1') -Force
Connect-MailworkerExchange -Organization $Organization

if ($PSCmdlet.ParameterSetName -eq 'ByName') { $ServicePrincipal = (Get-MailworkerNames -AppName $AppName).ServicePrincipal }
$sp = Get-ServicePrincipal -Identity $ServicePrincipal -ErrorAction SilentlyContinue
if (-not $sp) { throw "Exchange service principal '$ServicePrincipal' not found. Run Grant-MailworkerMailboxScope.ps1 first." }

$overlap = $Mailbox | Where-Object { $_ -in $DeniedMailbox }
if ($overlap) { throw "Mailboxes both approved and denied: $($overlap -join ', ')" }

$rows = @(
    foreach ($m in $Mailbox) { $r = Test-MailSendAuthorization -ServicePrincipal $sp.ObjectId -Mailbox $m
        [pscustomobject]@{ Mailbox = $m; Role = 'Mail.Send'; Expected = 'InScope'; InScope = $r.InScope; Result = if ($r.InScope) { 'PASS' } else { 'FAIL' }; Scopes = $r.Scopes } }
    foreach ($m in $DeniedMailbox) { $r = Test-MailSendAuthorization -ServicePrincipal $sp.ObjectId -Mailbox $m
        [pscustomobject]@{ Mailbox = $m; Role = 'Mail.Send'; Expected = 'Denied'; InScope = $r.InScope; Result = if (-not $r.InScope) { 'PASS' } else { 'FAIL' }; Scopes = $r.Scopes } }
    # Mail.ReadWrite (draft delivery mode): the approved mailboxes only, and only when the draft mode is used.
    foreach ($m in $Mailbox) { $r = Test-MailReadWriteAuthorization -ServicePrincipal $sp.ObjectId -Mailbox $m
        $ok = if ($DraftMode) { $r.InScope } else { -not $r.InScope }
        [pscustomobject]@{ Mailbox = $m; Role = 'Mail.ReadWrite'; Expected = if ($DraftMode) { 'InScope' } else { 'Denied' }; InScope = $r.InScope; Result = if ($ok) { 'PASS' } else { 'FAIL' }; Scopes = $r.Scopes } }
    foreach ($m in $DeniedMailbox) { $r = Test-MailReadWriteAuthorization -ServicePrincipal $sp.ObjectId -Mailbox $m
        [pscustomobject]@{ Mailbox = $m; Role = 'Mail.ReadWrite'; Expected = 'Denied'; InScope = $r.InScope; Result = if (-not $r.InScope) { 'PASS' } else { 'FAIL' }; Scopes = $r.Scopes } }
)
Write-Host "Service principal: $($sp.DisplayName) (AppId $($sp.AppId), ObjectId $($sp.ObjectId))"
$rows | Format-Table Mailbox, Role, Expected, InScope, Result, Scopes -AutoSize | Out-Host
Write-Host (Get-MailworkerPropagationNote)
$failed = @($rows | Where-Object Result -eq 'FAIL')
if ($failed) {
    Write-Host "FAILED: $($failed.Count) of $($rows.Count) checks." -ForegroundColor Red
    exit 1
}
Write-Host "PASSED: $($rows.Count) checks." -ForegroundColor Green
exit 0
