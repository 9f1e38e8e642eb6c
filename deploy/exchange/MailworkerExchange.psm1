#Requires -Version 7.4
<#
.SYNOPSIS
    Shared helpers for the mailworker Exchange Online RBAC for Applications scripts.
.NOTES
    Needs ExchangeOnlineManagement 3.x:  Install-Module ExchangeOnlineManagement -Scope CurrentUser
    Role: Exchange Administrator (Entra) or membership of the Exchange "Organization Management" role group
    (New-ManagementScope / New-ManagementRoleAssignment need the "Role Management" role).
#>
Set-StrictMode -Version Latest

$script:PropagationNote = @'
NOTE: Exchange RBAC for Applications changes take effect after a cache refresh that takes between
30 minutes and 2 hours (depending on recent use of the app). Test-ServicePrincipalAuthorization bypasses
that cache and shows the new state at once, while real Graph sendMail calls may still get the OLD answer
(403 ErrorAccessDenied for a newly added mailbox, or success for a removed one) until the cache refreshes.
mailworker retries access_denied a bounded number of times before dead-lettering; replay those jobs once
the change has propagated.
'@

function Get-MailworkerPropagationNote { $script:PropagationNote }

function Connect-MailworkerExchange {
    <# Connects to Exchange Online unless a connection exists. #>
    [CmdletBinding()]
    param(
        [string] $Organization,
        [ValidateSet('O365Default', 'O365USGovGCCHigh', 'O365USGovDoD', 'O365China')][string] $ExchangeEnvironmentName = 'O365Default'
    )
    $conn = Get-ConnectionInformation -ErrorAction SilentlyContinue | Where-Object { $_.State -eq 'Connected' } | Select-Object -First 1
    if (-not $conn) {
        $p = @{ ShowBanner = $false; ExchangeEnvironmentName = $ExchangeEnvironmentName }
        if ($Organization) { $p.Organization = $Organization }
        Connect-ExchangeOnline @p
    }
}

function Get-MailworkerNames {
    <# The Exchange object names used for one integrating application (a naming convention). #>
    param([Parameter(Mandatory)][string] $AppName)
    [pscustomobject]@{
        ServicePrincipal = "mailworker-$AppName"
        Scope            = "mailworker-$AppName-mailboxes"
        Assignment       = "mailworker-$AppName-Mail.Send"
        DraftAssignment  = "mailworker-$AppName-Mail.ReadWrite"  # draft delivery mode only
        AttributeValue   = "mailworker-$AppName"
    }
}

function Test-MailSendAuthorization {
    <#
    .SYNOPSIS
        Runs Test-ServicePrincipalAuthorization for one mailbox and reduces it to the "Application Mail.Send"
        rows: returns an object with Mailbox, InScope (true if any Mail.Send grant covers the mailbox) and the
        raw rows.
    #>
    param([Parameter(Mandatory)][string] $ServicePrincipal, [Parameter(Mandatory)][string] $Mailbox)
    $rows = @(Test-ServicePrincipalAuthorization -Identity $ServicePrincipal -Resource $Mailbox -ErrorAction Stop)
    $send = @($rows | Where-Object { $_.RoleName -eq 'Application Mail.Send' -or "$($_.GrantedPermissions)" -match '\bMail\.Send\b' })
    [pscustomobject]@{
        Mailbox = $Mailbox
        InScope = [bool]($send | Where-Object { $_.InScope -eq $true })
        Scopes  = ($send | ForEach-Object { "$($_.ScopeType):$($_.AllowedResourceScope)=$($_.InScope)" }) -join '; '
    }
}

function Test-MailReadWriteAuthorization {
    <#
    .SYNOPSIS
        As Test-MailSendAuthorization, for the "Application Mail.ReadWrite" role that mailworker's draft
        delivery mode needs (create, read and delete messages in the approved mailboxes): returns
        Mailbox, InScope and the raw grants.
    #>
    param([Parameter(Mandatory)][string] $ServicePrincipal, [Parameter(Mandatory)][string] $Mailbox)
    $rows = @(Test-ServicePrincipalAuthorization -Identity $ServicePrincipal -Resource $Mailbox -ErrorAction Stop)
    $rw = @($rows | Where-Object { $_.RoleName -eq 'Application Mail.ReadWrite' -or "$($_.GrantedPermissions)" -match '\bMail\.ReadWrite\b' })
    [pscustomobject]@{
        Mailbox = $Mailbox
        InScope = [bool]($rw | Where-Object { $_.InScope -eq $true })
        Scopes  = ($rw | ForEach-Object { "$($_.ScopeType):$($_.AllowedResourceScope)=$($_.InScope)" }) -join '; '
    }
}

Export-ModuleMember -Function Get-MailworkerPropagationNote, Connect-MailworkerExchange, Get-MailworkerNames, Test-MailSendAuthorization, Test-MailReadWriteAuthorization
